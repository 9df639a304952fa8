"""CUDA and AMP paths. Skipped without a GPU; run them on a CUDA machine with `pytest -m gpu`."""

import pytest
import torch
from conftest import tiny_config

from facetrain.config import HEAD_TYPES, HeadConfig
from facetrain.models.heads import build_head
from facetrain.training.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_training_runs_and_loss_falls(faces, tmp_path, amp):
    cfg = tiny_config(faces, tmp_path / amp, train={"epochs": 4, "device": "cuda", "amp": amp})
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    assert trainer.precision.name == amp and trainer.scaler.is_enabled() == (amp == "fp16")
    history = trainer.fit().history
    assert history[-1]["loss"] < history[0]["loss"]
    state = torch.load(tmp_path / amp / "last.pt", weights_only=True)
    assert bool(state["scaler"]) == (amp == "fp16")


@pytest.mark.parametrize("kind", HEAD_TYPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_head_is_float32_under_cuda_autocast(kind, dtype):
    head = build_head(HeadConfig(type=kind), 16, 10).cuda().train()
    embeddings = torch.randn(8, 16, device="cuda")
    embeddings[0] = 0.0  # zero norm
    rows = head.state_dict().get("class_centers", torch.ones(10, 16, device="cuda"))
    embeddings[1] = rows[1 * getattr(head, "centers_per_class", 1)]  # on class 1's (first sub-)centre: cos = 1
    labels = torch.arange(8, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        logits, scores = head(embeddings.to(dtype), labels)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    assert logits.dtype == torch.float32 and scores.dtype == torch.float32
    assert torch.isfinite(logits).all()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def _torchrun(tmp_path, processes: int, *options: str):
    import subprocess
    import sys

    from conftest import REPO, write_tiny_yaml

    train = "{epochs: 2, batch_size: 4, lr: 0.05, device: cuda, log_every_steps: 1}"
    config = write_tiny_yaml(tmp_path, "{s: 16.0, m: 0.2}", train, per_identity=8)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return subprocess.run(
        [*command, "-m", "facetrain", "train", "--config", str(config), *options],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip


def test_world_size_1_nccl_run_on_one_gpu(tmp_path):
    result = _torchrun(tmp_path, 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["world_size"] == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("sync_bn", [False, True])
def test_ddp_with_nccl_on_two_gpus(tmp_path, sync_bn):
    result = _torchrun(tmp_path, 2, "--set", f"model.sync_bn={str(sync_bn).lower()}", "--set", "head.sample_rate=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["head"]["class_centers"].shape == (4, 16)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("head", ["arcface", "curricularface", "adaface"])
def test_a_cuda_training_step_never_waits_for_the_host(faces, tmp_path, amp, head):
    cfg = tiny_config(
        faces, tmp_path / "run", head={"type": head}, train={"device": "cuda", "amp": amp, "log_every_steps": 100}
    )
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    assert trainer.optimizer.defaults.get("fused") and trainer.memory_format is torch.channels_last
    trainer.model.train()
    trainer.head.train()
    trainer.sampler.set_epoch(0)
    batches = iter(trainer.loader)
    trainer.train_step(batches, 1, ())  # the first step may allocate and pick kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        for _ in range(2):
            trainer.train_step(batches, 1, ())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.guard.first_bad() is None
