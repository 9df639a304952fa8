"""Fine-tuning: model.init_from, head.init: imprint, train.embedder_lr_scale and train.freeze_embedder_epochs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_faces, tiny_config
from test_distributed import run_ranks

from facetrain import distributed
from facetrain.checkpoint import load_checkpoint
from facetrain.config import TrainConfig, config_from_dict
from facetrain.data import model_input
from facetrain.errors import CheckpointError, ConfigError
from facetrain.models import load_model
from facetrain.training import check_inputs, train
from facetrain.training.finetune import center_rows
from facetrain.training.optim import build_optimizer, fit_saved_groups
from facetrain.training.trainer import Trainer

HEADS = {
    "arcface": {"type": "arcface"},
    "subcenter_arcface": {"type": "subcenter_arcface", "k": 2},
    "adaface": {"type": "adaface", "m": 0.2},
    "softmax": {"type": "softmax", "s": None, "m": None},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A trained checkpoint (resnet18, 16-d) to start from: one short epoch on 4 identities."""
    root = tmp_path_factory.mktemp("source")
    faces = make_faces(root / "faces")
    trainer = Trainer(tiny_config(faces, root / "run", train={"epochs": 1}), progress=False)
    trainer.setup()
    trainer.fit()
    return root / "run" / "last.pt"


@pytest.fixture(scope="module")
def new_faces(tmp_path_factory) -> Path:
    """Other identities than the source was trained on: a fine-tune's data."""
    return make_faces(tmp_path_factory.mktemp("new") / "faces", identities=5, per_identity=6, seed=7)


def fine_tune(faces: Path, run_dir: Path, source: Path, head: dict | None = None, **train_settings):
    return tiny_config(
        faces, run_dir, model={"init_from": str(source)}, head=head or {}, train={"epochs": 2, **train_settings}
    )


def make_trainer(cfg, **kwargs) -> Trainer:
    trainer = Trainer(cfg, progress=False, **kwargs)
    trainer.setup()
    return trainer


def embedder_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in trainer.embedder.state_dict().items()}


def train_pixels(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training image as the model sees it (no flip), and its label."""
    dataset = trainer.data.train
    pixels = torch.stack([dataset.read(index) for index in range(len(dataset))])
    return model_input(pixels, None, torch.device("cpu"), torch.preserve_format), torch.tensor(dataset.labels)


# ------------------------------------------------------------------ init_from
def test_init_from_loads_the_source_embedder_exactly(source, new_faces, tmp_path):
    trainer = make_trainer(fine_tune(new_faces, tmp_path / "run", source))
    saved = load_checkpoint(source)["embedder"]
    now = trainer.embedder.state_dict()
    assert now.keys() == saved.keys() and all(torch.equal(now[key], saved[key]) for key in saved)
    images, _ = train_pixels(trainer)
    with torch.no_grad():
        expected = load_model(source, torch.device("cpu")).embedder.to(memory_format=trainer.memory_format)(images)
        assert torch.equal(trainer.embedder.eval()(images), expected)  # the same weights, in the run's layout


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"backbone": "resnet34"}, "holds a resnet18 with 16-d embeddings; this config has model.backbone=resnet34: "
                                   "set model.backbone: resnet18"),
        ({"embedding_dim": 32}, "holds a resnet18 with 16-d embeddings; this config has model.embedding_dim=32: "
                                "set model.embedding_dim: 16"),
    ],
)  # fmt: skip
def test_another_architecture_is_one_line_naming_both(source, new_faces, tmp_path, model, message):
    cfg = tiny_config(new_faces, tmp_path / "run", model={"init_from": str(source), **model})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as caught:
        make_trainer(cfg)
    assert "\n" not in str(caught.value)


def test_an_architecture_mismatch_is_found_before_the_data_is_scanned(source, new_faces, tmp_path, monkeypatch):
    def scan(*_):
        raise AssertionError("the data was scanned before model.init_from was checked")

    monkeypatch.setattr("facetrain.training.trainer.build_datasets", scan)
    with pytest.raises(ConfigError, match="model.init_from: .* holds a resnet18 with 16-d embeddings"):
        make_trainer(tiny_config(new_faces, tmp_path / "run", model={"init_from": str(source), "embedding_dim": 8}))


def test_init_from_inside_run_dir_is_refused_before_anything_is_written(source, new_faces, tmp_path):
    """The new run's own best.pt (or --overwrite, which clears run_dir) would replace the file it starts from."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    inside = run_dir / "best.pt"
    shutil.copy(source, inside)
    cfg = fine_tune(new_faces, run_dir, inside)
    for check in (lambda: check_inputs(cfg, overwrite=True), lambda: make_trainer(cfg, overwrite=True)):
        with pytest.raises(ConfigError, match="model.init_from: .* is inside run_dir .* set run_dir to another folder"):
            check()
    assert inside.is_file() and sorted(p.name for p in run_dir.iterdir()) == ["best.pt"]


def test_init_from_refuses_pretrained_and_imprint_needs_init_from(new_faces, tmp_path):
    raw = {"data": {"root": str(new_faces)}, "model": {"backbone": "resnet18", "init_from": "a.pt", "pretrained": "b"}}
    with pytest.raises(ConfigError, match="model.init_from and model.pretrained both"):
        config_from_dict(raw)
    with pytest.raises(ConfigError, match="head.init: imprint .* without model.init_from"):
        config_from_dict({"data": {"root": str(new_faces)}, "head": {"init": "imprint"}})


def test_a_missing_or_foreign_init_file_is_refused_before_any_model(new_faces, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    for path, message in ((tmp_path / "no.pt", "not found"), (tmp_path / "notes.txt", "it is a text file")):
        with pytest.raises(CheckpointError, match=f"model.init_from: checkpoint .*{message}"):
            check_inputs(tiny_config(new_faces, tmp_path / "run", model={"init_from": str(path)}))


def test_an_embedder_only_checkpoint_is_enough(source, new_faces, tmp_path):
    state = load_checkpoint(source)
    only = {"format_version": 1, "config": state["config"], "embedder": state["embedder"]}
    torch.save(only, tmp_path / "embedder.pt")
    trainer = make_trainer(fine_tune(new_faces, tmp_path / "run", tmp_path / "embedder.pt"))
    assert all(torch.equal(trainer.embedder.state_dict()[k], v) for k, v in state["embedder"].items())


# ------------------------------------------------------------------ resume
def test_resume_refuses_a_config_with_init_from(source, new_faces, tmp_path):
    cfg = fine_tune(new_faces, tmp_path / "run", source)
    with pytest.raises(ConfigError, match="give --resume alone") as caught:
        train(cfg, resume=source)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="init_from starts a new run"):
        check_inputs(cfg, resume=source)


def test_a_fine_tune_resumes_from_its_own_checkpoint_without_init_from(source, new_faces, tmp_path):
    moved = tmp_path / "source.pt"
    shutil.copy(source, moved)
    trainer = make_trainer(fine_tune(new_faces, tmp_path / "run", moved, head=HEADS["softmax"]))
    trainer.fit(stop_at_epoch=1)
    last = tmp_path / "run" / "last.pt"
    moved.unlink()  # re-reading init_from would now fail
    with pytest.raises(ConfigError, match="give --resume alone"):
        train(None, resume=last, overrides=[f"model.init_from={source}"])
    result = train(None, resume=last, progress=False)
    assert (result.epochs_done, result.resumed) == (2, True)
    resumed = load_checkpoint(last)
    assert resumed["config"]["model"]["init_from"] == str(moved)  # the run's record of where it started


def test_resume_setup_keeps_the_checkpoint_embedder(source, new_faces, tmp_path):
    cfg = fine_tune(new_faces, tmp_path / "run", source, head={"init": "imprint"})
    make_trainer(cfg).fit(stop_at_epoch=1)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    resumed = make_trainer(cfg, resume=tmp_path / "run" / "last.pt")  # a library caller may pass its config
    assert all(torch.equal(resumed.embedder.state_dict()[k], v) for k, v in state["embedder"].items())
    assert all(torch.equal(resumed.head.state_dict()[k], v) for k, v in state["head"].items())  # not re-imprinted


# ------------------------------------------------------------------ imprint
@pytest.mark.parametrize("head", list(HEADS))
def test_imprint_sets_every_centre_to_its_class_mean(source, new_faces, tmp_path, head):
    trainer = make_trainer(fine_tune(new_faces, tmp_path / "run", source, head={**HEADS[head], "init": "imprint"}))
    images, labels = train_pixels(trainer)
    with torch.no_grad():
        unit = F.normalize(load_model(source, torch.device("cpu")).embedder(images), dim=1)
    expected = torch.stack([F.normalize(unit[labels == c].mean(0), dim=0) for c in range(trainer.data.num_classes)])
    weight, bias, per_class, _ = center_rows(trainer.head)
    weight = weight.detach().view(len(expected), per_class, -1)
    assert torch.allclose(weight[:, 0], expected, atol=1e-5)
    if per_class > 1:  # the other sub-centres: near the mean, yet apart, so the max over them is not a tie
        cosines = (weight[:, 1:] * expected[:, None]).sum(-1)
        assert (
            (cosines > 0.99).all() and (cosines < 1 - 1e-6).all() and torch.allclose(weight.norm(dim=-1), torch.ones(1))
        )
    if bias is not None:
        assert torch.equal(bias.detach(), torch.zeros_like(bias))


def test_imprinted_centres_classify_the_training_set_from_the_first_step(source, new_faces, tmp_path):
    """(accuracy with the embedder as imprinting saw it, mean loss of the first steps as training takes them)."""

    def first_pass(init: str) -> tuple[float, float]:
        trainer = make_trainer(fine_tune(new_faces, tmp_path / init, source, head={"init": init}))
        outcome = []
        for training in (False, True):  # eval mode: BatchNorm's running statistics; train: the batch's
            trainer.model.train(training)
            losses, correct = [], 0
            with torch.no_grad():
                for batch in trainer.loader:
                    loss, right = trainer.forward_loss(*trainer.model_batch(batch), 0)
                    losses.append(float(loss))
                    correct += int(right)
            outcome.append((correct / (len(losses) * trainer.config.train.batch_size), sum(losses) / len(losses)))
        return outcome[0][0], outcome[1][1]

    (imprinted, imprinted_loss), (random, random_loss) = first_pass("imprint"), first_pass("random")
    # 5 new identities (chance 0.2) under an embedder trained 4 steps on 4 others.
    assert imprinted >= 0.6 and random <= 0.3, (imprinted, random)
    assert imprinted_loss < 0.75 * random_loss, (imprinted_loss, random_loss)


def _imprint_and_freeze_worker(faces: Path, source: Path, out: Path) -> None:
    """Imprints a sharded head, then trains it alone for an epoch and with the embedder (in DDP) for one more."""
    head = {"type": "cosface", "init": "imprint"}
    trainer = make_trainer(fine_tune(faces, out.parent / "ranks", source, head=head, freeze_embedder_epochs=1))
    full = trainer.head.full_state()
    if distributed.is_main():
        torch.save(full, out)
    start = embedder_state(trainer)
    trainer.fit(stop_at_epoch=1)
    assert all(torch.equal(trainer.embedder.state_dict()[k], v) for k, v in start.items())
    trainer.fit()
    assert not torch.equal(trainer.embedder.state_dict()["neck.3.weight"], start["neck.3.weight"])


def test_two_ranks_imprint_their_slices_as_one_process_does_and_freeze_under_ddp(source, new_faces, tmp_path):
    run_ranks(2, _imprint_and_freeze_worker, new_faces, source, tmp_path / "ranks.pt")
    one = make_trainer(fine_tune(new_faces, tmp_path / "one", source, head={"type": "cosface", "init": "imprint"}))
    assert torch.allclose(
        torch.load(tmp_path / "ranks.pt", weights_only=True)["class_centers"], one.head.class_centers, atol=1e-5
    )


# ------------------------------------------------------------------ learning-rate scale
def test_embedder_lr_scale_sets_the_groups_ratio(new_faces, tmp_path):
    trainer = make_trainer(tiny_config(new_faces, tmp_path / "run", train={"embedder_lr_scale": 0.1}))
    for _ in range(3):
        trainer.scheduler.step()
        lrs = [group["lr"] for group in trainer.optimizer.param_groups]
        head_lr = trainer.scheduler.lr
        assert lrs == pytest.approx([0.1 * head_lr, 0.1 * head_lr, head_lr, head_lr])
    embedder = {id(p) for p in trainer.embedder.parameters()}
    assert all(id(p) in embedder for group in trainer.optimizer.param_groups[:2] for p in group["params"])
    assert not any(id(p) in embedder for group in trainer.optimizer.param_groups[2:] for p in group["params"])


def test_an_optimizer_state_of_two_groups_loads_into_the_four_group_layout():
    torch.manual_seed(0)
    embedder = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    head = torch.nn.Linear(3, 5)
    params = [*embedder.parameters(), *head.parameters()]
    old = torch.optim.SGD(
        [{"params": [p for p in params if p.ndim > 1]}, {"params": [p for p in params if p.ndim == 1]}],
        lr=0.1,
        momentum=0.9,
    )  # the layout of checkpoints written before train.embedder_lr_scale
    for param in params:
        param.grad = torch.randn_like(param)
    old.step()
    new = build_optimizer(TrainConfig(), [embedder, head], lr_scales=(0.5, 1.0))
    new.load_state_dict(fit_saved_groups(new, old.state_dict()))
    for param in params:
        assert torch.equal(new.state[param]["momentum_buffer"], old.state[param]["momentum_buffer"])


# ------------------------------------------------------------------ freeze
def test_a_frozen_embedder_stays_bit_identical_also_across_resume(new_faces, tmp_path):
    cfg = tiny_config(
        new_faces, tmp_path / "run", model={"backbone": "iresnet18"},
        train={"epochs": 3, "freeze_embedder_epochs": 2},
    )  # fmt: skip
    trainer = make_trainer(cfg)
    start, head = embedder_state(trainer), {k: v.clone() for k, v in trainer.head.state_dict().items()}
    trainer.fit(stop_at_epoch=1)
    assert all(torch.equal(trainer.embedder.state_dict()[k], v) for k, v in start.items())  # BN statistics too
    assert not all(torch.equal(trainer.head.state_dict()[k], v) for k, v in head.items())
    resumed = make_trainer(cfg, resume=tmp_path / "run" / "last.pt")
    resumed.fit(stop_at_epoch=2)  # resumed inside the freeze: still frozen
    assert all(torch.equal(resumed.embedder.state_dict()[k], v) for k, v in start.items())
    resumed.fit()
    now = resumed.embedder.state_dict()
    assert not torch.equal(now["neck.fc.weight"], start["neck.fc.weight"])
    assert not torch.equal(now["backbone.bn1.running_mean"], start["backbone.bn1.running_mean"])
    fixed = resumed.embedder.neck.features.weight  # IResNet's final BN scale: fixed at 1 by design
    assert not fixed.requires_grad and torch.equal(fixed, torch.ones_like(fixed))
