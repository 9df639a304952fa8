"""The speed options: the device-side gradient check, no host reads in a plain step, channels_last and compile."""

import functools
import logging
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from facetrain.config import HEAD_TYPES
from facetrain.errors import TrainingError
from facetrain.runtime import CompiledOrEager, use_channels_last
from facetrain.training.optim import build_optimizer
from facetrain.training.trainer import Trainer


def make_trainer(cfg) -> Trainer:
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {**trainer.embedder.state_dict(), **{f"head.{k}": v for k, v in trainer.head.state_dict().items()}}


def test_a_non_finite_gradient_stops_the_run_before_it_is_saved_naming_its_step(faces, tmp_path, monkeypatch):
    cfg = tiny_config(faces, tmp_path / "run", train={"epochs": 3, "log_every_steps": 100})  # 4 steps an epoch
    trainer = make_trainer(cfg)
    forward = trainer.forward_loss

    def poisoned(images, labels, key, measure=False):
        loss, correct = forward(images, labels, key, measure)
        return (loss * float("nan"), correct) if key == 5 else (loss, correct)  # the 6th step

    monkeypatch.setattr(trainer, "forward_loss", poisoned)
    with pytest.raises(TrainingError, match=r"the gradient became nan at step 6 \(lr [0-9.e-]+\): lower train.lr"):
        trainer.fit()
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["step"] == 4  # epoch 1's; epoch 2 ended with the check, before its save
    assert all(value.isfinite().all() for value in saved["embedder"].values() if value.is_floating_point())


class HostReads:
    """Counts the tensor reads that make a CUDA host wait for the device."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        @functools.wraps(original)
        def counted(tensor, *args, **kwargs):
            self.calls.append(name)
            return original(tensor, *args, **kwargs)

        return counted


@pytest.mark.parametrize("head", HEAD_TYPES)
def test_a_step_that_is_not_logged_reads_nothing_back_from_the_device(faces, tmp_path, monkeypatch, head):
    cfg = tiny_config(
        faces,
        tmp_path / "run",
        head={"type": head, "s": None, "m": None},
        train={"log_every_steps": 100, "grad_clip": 5.0},
    )
    trainer = make_trainer(cfg)
    trainer.model.train()
    trainer.head.train()
    trainer.sampler.set_epoch(0)
    batches = iter(trainer.loader)
    trainer.train_step(batches, 1, ())  # first steps may set things up
    reads = HostReads(monkeypatch)
    for _ in range(2):
        trainer.train_step(batches, 1, ())
    assert reads.calls == []
    trainer._check_gradients()  # what a log step does: one read, which the counter sees
    assert reads.calls
    monkeypatch.undo()


def test_channels_last_is_on_for_cuda_and_cpu_by_default():
    assert use_channels_last("auto", torch.device("cuda")) and use_channels_last("auto", torch.device("cpu"))
    assert not use_channels_last("auto", torch.device("meta"))
    assert use_channels_last(True, torch.device("cpu")) and not use_channels_last(False, torch.device("cuda"))


def test_channels_last_on_cpu_trains_the_same_model_and_saves_plain_weights(faces, tmp_path):
    plain = make_trainer(tiny_config(faces, tmp_path / "a", train={"epochs": 1, "channels_last": False}))
    nhwc = make_trainer(tiny_config(faces, tmp_path / "b", train={"epochs": 1, "channels_last": True}))
    conv = next(v for v in nhwc.embedder.state_dict().values() if v.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain.fit()
    nhwc.fit()
    a, b = weights(plain), weights(nhwc)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-3, worst


def test_auto_settings_on_cpu_are_channels_last_and_an_unfused_optimizer(faces, tmp_path):
    auto = make_trainer(tiny_config(faces, tmp_path / "a", train={"epochs": 1}))
    on = make_trainer(tiny_config(faces, tmp_path / "b", train={"epochs": 1, "channels_last": True}))
    assert auto.memory_format is torch.channels_last
    assert not any(group.get("fused") for group in auto.optimizer.param_groups)
    auto.fit()
    on.fit()
    a, b = weights(auto), weights(on)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fused_optimizer_on_cuda_only():
    model = torch.nn.Linear(3, 2)
    from facetrain.config import TrainConfig

    for kind in ("sgd", "adamw"):
        cpu = build_optimizer(TrainConfig(optimizer=kind), [model], torch.device("cpu"))
        assert not cpu.defaults.get("fused")


def test_compile_that_fails_falls_back_once_with_a_warning_and_the_same_results(faces, tmp_path, monkeypatch, caplog):
    def broken(module, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no compiler here\nmore detail")

        return run

    data = {"val_identities": 2}  # evaluation runs too, compiled or not
    plain = make_trainer(tiny_config(faces, tmp_path / "a", data=data, train={"epochs": 1}))
    plain.fit()
    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        compiled = make_trainer(tiny_config(faces, tmp_path / "b", data=data, train={"epochs": 1, "compile": True}))
        assert isinstance(compiled.model, CompiledOrEager)
        compiled.fit()
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1, warnings  # evaluation does not try again
    on_cpu = [r.getMessage() for r in caplog.records if "targets GPUs" in r.getMessage()]
    assert len(on_cpu) == 1 and "set train.compile: false there" in on_cpu[0]  # said once, before any step
    assert "RuntimeError: no compiler here" in warnings[0] and "train.compile: false" in warnings[0]
    a, b = weights(plain), weights(compiled)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert saved["embedder"].keys() == plain.embedder.state_dict().keys()


def test_compiled_training_resumes_exactly_and_keeps_plain_checkpoint_keys(faces, tmp_path, monkeypatch):
    """Dynamo traces the embedder (the eager backend: no C++ compiler needed); the checkpoint is the plain one."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    overrides = {"compile": True, "epochs": 2}
    straight = make_trainer(tiny_config(faces, tmp_path / "a", train=overrides))
    straight.fit()
    assert not straight.model.failed
    first = make_trainer(tiny_config(faces, tmp_path / "b", train=overrides))
    first.fit(stop_at_epoch=1)
    resumed = Trainer(
        tiny_config(faces, tmp_path / "b", train=overrides), progress=False, resume=tmp_path / "b" / "last.pt"
    )
    resumed.setup()
    resumed.fit()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert not any("_orig_mod" in key or key.startswith("module.") for key in saved["embedder"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compile_on_cpu_shows_facetrain_warning_and_none_of_torchs_notices():
    """A real inductor compile on the CPU: torch's own "No CUDA runtime is found" notice is not shown."""
    script = (
        "import logging, sys, torch\n"
        "from facetrain.runtime import warn_compile_on_cpu\n"
        "logging.getLogger('facetrain').addHandler(logging.StreamHandler(sys.stderr))\n"
        "warn_compile_on_cpu()\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())\n"
        "print(tuple(torch.compile(model)(torch.randn(2, 3, 8, 8)).shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(2, 4, 6, 6)"
    assert result.stderr.strip().splitlines() == [
        "train.compile: torch.compile targets GPUs; on a CPU the first steps spend minutes compiling and the run is "
        "rarely faster: set train.compile: false there"
    ]
