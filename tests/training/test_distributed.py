"""Multi-process training on CPU with gloo: 2-3 ranks started by torch.multiprocessing.spawn.

The ranks must compute what one process computes with the combined batch (the embedder here has no
batch statistics, so nothing else differs), and a checkpoint must resume at any world size.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import socket
import weakref
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_faces, tiny_config
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facetrain import distributed
from facetrain.checkpoint import load_checkpoint
from facetrain.config import HEAD_TYPES, HeadConfig
from facetrain.models import ShardedHead, build_head
from facetrain.training import trainer as trainer_module
from facetrain.training.trainer import Trainer

HEAD_SECTIONS = {
    kind: {"type": kind, "m": None, "m2": 0.2} if kind == "combined" else {"type": kind} for kind in HEAD_TYPES
}
HEAD_SECTIONS["softmax"] = {"type": "softmax", "s": None, "m": None}


# ------------------------------------------------------------------ harness
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world: int, port: int, function, args) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu"), 120):
        function(*args)


def run_ranks(world: int, function, *args) -> None:
    """Runs ``function(*args)`` on ``world`` gloo ranks; an exception in any rank fails the test."""
    torch.multiprocessing.spawn(_entry, args=(world, _free_port(), function, args), nprocs=world, join=True)


class TinyEmbedder(nn.Module):
    """A linear embedder without batch statistics: what ranks compute must not depend on the split."""

    def __init__(self, image_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.layer = nn.Linear(3 * image_size * image_size, embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layer(images.flatten(1))


@contextmanager
def tiny_embedder():
    original = trainer_module.build_embedder
    trainer_module.build_embedder = lambda cfg, size: TinyEmbedder(size, cfg.embedding_dim)
    try:
        yield
    finally:
        trainer_module.build_embedder = original


def config(faces: Path, run_dir: Path, head: str = "arcface", **train):
    settings = {"batch_size": 4, "epochs": 2, "lr": 0.1, **train}
    return tiny_config(faces, run_dir, head=HEAD_SECTIONS[head], train=settings)


def train_recording(cfg, stop_at_epoch=None, resume=None) -> tuple[Trainer, list[float]]:
    trainer = Trainer(cfg, progress=False, resume=resume)
    trainer.setup()
    losses: list[float] = []
    forward = trainer.forward_loss

    def recording(*args):
        loss, correct = forward(*args)
        losses.append(loss.item())
        return loss, correct

    trainer.forward_loss = recording
    trainer.fit(stop_at_epoch)
    return trainer, losses


def logged(run_dir: Path, tag: str) -> list[float]:
    """A TensorBoard scalar's values, step by step, as the run's main rank wrote them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [event.value for event in EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars(tag)]


def full_weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return {**{f"e.{k}": v for k, v in state["embedder"].items()}, **{f"h.{k}": v for k, v in state["head"].items()}}


# ------------------------------------------------------------------ workers (run on every rank)
def _equivalence_worker(faces: Path, root: Path) -> None:
    with tiny_embedder():
        for head in HEAD_TYPES:
            _, losses = train_recording(config(faces, root / head, head, batch_size=4))
            if distributed.is_main():
                (root / f"{head}.json").write_text(json.dumps(losses))
        _, losses = train_recording(config(faces, root / "accum", batch_size=2, grad_accum_steps=2))
        if distributed.is_main():
            (root / "accum.json").write_text(json.dumps(losses))
    _partial_fc_check()


def _partial_fc_check() -> None:
    """Sampled classes keep every positive, labels land on their class, and the loss is the
    cross-entropy over exactly the sampled columns of the whole classifier."""
    rank, world, classes = distributed.rank(), distributed.world_size(), 40
    cfg = HeadConfig(type="cosface", s=8.0, m=0.1, sample_rate=0.25)
    torch.manual_seed(5)
    sharded = ShardedHead(cfg, 8, classes, seed=3).train()
    torch.manual_seed(5)
    whole = build_head(cfg, 8, classes)
    assert torch.equal(whole.class_centers[sharded.first : sharded.end], sharded.head.class_centers)
    generator = torch.Generator().manual_seed(11)
    embeddings = torch.randn(world * 6, 8, generator=generator)
    labels = torch.randint(0, classes, (world * 6,), generator=generator)
    mine = slice(rank * 6, rank * 6 + 6)
    own_embeddings = embeddings[mine].clone().requires_grad_()
    loss, _, _ = sharded(own_embeddings, labels[mine], key=7)

    local = labels - sharded.first
    owned = (local >= 0) & (local < sharded.local_classes)
    chosen, position = sharded.sample(local, owned, key=7)
    assert set(local[owned].tolist()) <= set(chosen.tolist())  # every positive kept
    assert torch.equal(chosen[position[owned]], local[owned])  # labels remapped onto their class
    assert len(chosen) == max(math.ceil(0.25 * sharded.local_classes), len(set(local[owned].tolist())))
    columns = sorted(c for part in distributed.all_gather_objects((chosen + sharded.first).tolist()) for c in part)
    assert set(labels.tolist()) <= set(columns)
    cosine = whole.scores(embeddings)[:, columns]
    remapped = torch.tensor([columns.index(label) for label in labels.tolist()])
    expected = F.cross_entropy(whole.logits(cosine, remapped.view(-1, 1), embeddings) * 8.0, remapped)
    assert torch.allclose(loss, expected, atol=1e-5), (loss.item(), expected.item())


def _resume_worker(faces: Path, root: Path) -> None:
    """Straight 2-epoch run, and the same run stopped mid-epoch (after step 2) and resumed: equal."""
    with tiny_embedder():
        train_recording(config(faces, root / "straight", checkpoint_every_steps=1))
        cfg = config(faces, root / "stopped", checkpoint_every_steps=1)
        trainer = Trainer(cfg, progress=False)
        trainer.setup()
        save = trainer.save
        trainer.save = lambda: save() if trainer.step <= 2 else None
        trainer.fit(stop_at_epoch=1)
        distributed.barrier()
        if distributed.is_main():
            shutil.copy(root / "stopped" / "last.pt", root / "mid.pt")
        distributed.barrier()
        train_recording(cfg, resume=root / "stopped" / "last.pt")


def _reshard_worker(faces: Path, root: Path, name: str) -> None:
    """Resumes mid.pt (written by 2 ranks) on this world size; the whole head must come back unchanged."""
    with tiny_embedder():
        trainer = Trainer(config(faces, root / name, checkpoint_every_steps=1), progress=False, resume=root / "mid.pt")
        trainer.setup()
        reassembled = trainer.state()
        if distributed.is_main():
            _assert_same_training_state(reassembled, load_checkpoint(root / "mid.pt"))
        trainer.fit()


def _assert_same_training_state(now: dict, saved: dict) -> None:
    for key, value in saved["head"].items():
        assert torch.equal(now["head"][key], value), key
    for index, entry in saved["optimizer"]["state"].items():
        for name, value in entry.items():
            assert torch.equal(now["optimizer"]["state"][index][name], value), (index, name)
    for key, value in saved["embedder"].items():
        assert torch.equal(now["embedder"][key], value), key


def _cycle_worker(out: Path) -> None:
    """A DDP model left in a reference cycle, with automatic collection off: is it gone when the group ends?"""
    gc.disable()
    model = DistributedDataParallel(nn.Linear(2, 2))
    model.itself = model
    alive = weakref.ref(model)
    del model
    destroy = torch.distributed.destroy_process_group

    def recording_destroy(*args, **kwargs):
        out.write_text("alive" if alive() is not None else "collected")
        destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = recording_destroy


# ------------------------------------------------------------------ tests
@pytest.fixture
def faces(tmp_path):
    return make_faces(tmp_path / "faces", identities=4, per_identity=8, size=(16, 16))


@pytest.mark.alone  # several gloo processes
def test_two_ranks_match_one_process_with_the_combined_batch(faces, tmp_path):
    """2 ranks x batch 4 (sharded head) == 1 process x batch 8 (whole head): loss each step, weights after."""
    run_ranks(2, _equivalence_worker, faces, tmp_path / "two")
    with tiny_embedder():
        for head in HEAD_TYPES:
            _, single = train_recording(config(faces, tmp_path / "one" / head, head, batch_size=8))
            two = json.loads((tmp_path / "two" / f"{head}.json").read_text())
            assert len(two) == len(single) == 8
            assert max(abs(a - b) for a, b in zip(two, single, strict=True)) < 1e-5, (head, two, single)
            expected = full_weights(tmp_path / "one" / head / "last.pt")
            got = full_weights(tmp_path / "two" / head / "last.pt")
            assert expected.keys() == got.keys()
            for key in expected:
                assert torch.allclose(got[key], expected[key], atol=1e-5), (head, key)
            assert load_checkpoint(tmp_path / "two" / head / "last.pt")["world_size"] == 2
            if head != "softmax":  # the angle statistics are the global batch's, whatever the world size
                for tag in ("train/theta_y_deg", "train/theta_rival_deg", "train/center_cosine"):
                    one, two = logged(tmp_path / "one" / head, tag), logged(tmp_path / "two" / head, tag)
                    assert len(one) == len(two) == 8, (head, tag)
                    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-3, (head, tag, one, two)
        # Accumulating 2 micro-batches of 2 ranks x 2 is one process accumulating 2 micro-batches of 4.
        _, single = train_recording(config(faces, tmp_path / "one" / "accum", batch_size=4, grad_accum_steps=2))
        two = json.loads((tmp_path / "two" / "accum.json").read_text())
        assert len(two) == len(single) == 16 and max(abs(a - b) for a, b in zip(two, single, strict=True)) < 1e-5
        expected, got = (
            full_weights(tmp_path / "one" / "accum" / "last.pt"),
            full_weights(tmp_path / "two" / "accum" / "last.pt"),
        )
        assert all(torch.allclose(got[key], expected[key], atol=1e-5) for key in expected)


@pytest.mark.alone  # several gloo processes
def test_resume_is_exact_on_the_same_world_size_and_reshards_to_1_and_3_ranks(faces, tmp_path):
    run_ranks(2, _resume_worker, faces, tmp_path)
    straight, resumed = full_weights(tmp_path / "straight" / "last.pt"), full_weights(tmp_path / "stopped" / "last.pt")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), [
        k for k in straight if not torch.equal(straight[k], resumed[k])
    ]
    mid = load_checkpoint(tmp_path / "mid.pt")
    assert (mid["world_size"], mid["step"], mid["samples_in_epoch"]) == (2, 2, 16)
    assert mid["head"]["class_centers"].shape == (4, 16)  # the whole head, in one file

    run_ranks(3, _reshard_worker, faces, tmp_path, "three")
    with tiny_embedder():
        cfg = config(faces, tmp_path / "one", checkpoint_every_steps=1)
        trainer = Trainer(cfg, progress=False, resume=tmp_path / "mid.pt")
        trainer.setup()
        _assert_same_training_state(trainer.state(), mid)
        assert (trainer.batch_in_epoch, trainer.offset) == (4, 0)  # 16 samples at 4 per step
        assert (trainer.step, trainer.scheduler.step_count) == (2, 4)  # the count goes on, the schedule follows
        trainer.fit()
    for name, world in (("three", 3), ("one", 1)):
        final = load_checkpoint(tmp_path / name / "last.pt")
        assert (final["world_size"], final["epoch"]) == (world, 2)
        assert final["head"]["class_centers"].shape == (4, 16)


def test_sampling_keeps_positives_on_one_process():
    cfg = HeadConfig(type="arcface", s=16.0, m=0.2, sample_rate=0.1)
    head = ShardedHead(cfg, 8, 100, seed=0).train()
    labels = torch.tensor([3, 3, 50, 97, 12, 50])
    loss, correct, angles = head(torch.randn(6, 8, requires_grad=True), labels, key=1)
    assert angles is None  # measured only when asked (a log step)
    chosen, position = head.sample(labels, torch.ones(6, dtype=torch.bool), key=1)
    assert len(chosen) == 10 and {3, 12, 50, 97} <= set(chosen.tolist())
    assert torch.equal(chosen[position], labels)
    again, _ = head.sample(labels, torch.ones(6, dtype=torch.bool), key=1)
    assert torch.equal(again, chosen)  # a function of (seed, key, rank): a resumed run draws the same
    other, _ = head.sample(labels, torch.ones(6, dtype=torch.bool), key=2)
    assert not torch.equal(other, chosen)
    loss.backward()
    untouched = torch.ones(100, dtype=torch.bool)
    untouched[chosen] = False
    assert head.head.class_centers.grad[untouched].abs().sum() == 0  # only sampled rows get gradients
    assert head.head.class_centers.grad[chosen].abs().sum() > 0
    assert 0 <= int(correct) <= 6


@pytest.mark.alone  # several gloo processes
def test_ddp_in_a_reference_cycle_is_collected_before_the_group_ends(tmp_path):
    """Collected at the interpreter's exit instead, after the group, it aborts a gloo rank now and then."""
    run_ranks(1, _cycle_worker, tmp_path / "seen")
    assert (tmp_path / "seen").read_text() == "collected"
