"""Training with data.cache: bit-identical to decoding every epoch, exact resume, .rec files, eval sets, 2 ranks."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from conftest import jpeg_bytes, make_faces, tiny_config, write_records
from test_distributed import run_ranks, tiny_embedder

from facetrain import distributed
from facetrain.data import cache as cache_module
from facetrain.data.recordio import pack_payload
from facetrain.evaluation import PairImages
from facetrain.training.trainer import Trainer


def trained(cfg, resume=None, stop_at_epoch=None) -> tuple[Trainer, dict[str, torch.Tensor], list]:
    trainer = Trainer(cfg, progress=False, resume=resume)
    trainer.setup()
    result = trainer.fit(stop_at_epoch=stop_at_epoch)
    state = {f"e.{k}": v for k, v in trainer.embedder.state_dict().items()}
    state |= {f"h.{k}": v for k, v in trainer.head.state_dict().items()}
    return trainer, state, [result.before, result.after, *result.history]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def numbers(outcome: list) -> list:
    """The verification values and every epoch's statistics but its speed."""
    kept = []
    for item in outcome:
        if isinstance(item, dict):
            kept.append({key: value for key, value in item.items() if key != "images_per_sec"})
        else:
            kept.append(None if item is None else (item.value, item.detail))
    return kept


@pytest.fixture
def faces(tmp_path):
    return make_faces(tmp_path / "faces", identities=6, per_identity=6, size=(20, 24))


def test_cached_training_and_held_out_verification_are_bit_identical_to_decoding(faces, tmp_path, caplog):
    caplog.set_level(logging.INFO, "facetrain")
    data = {"val_identities": 2, "num_workers": 1}
    plain, plain_state, plain_out = trained(tiny_config(faces, tmp_path / "a", data={**data, "cache": "none"}))
    cached, cached_state, cached_out = trained(tiny_config(faces, tmp_path / "b", data={**data, "cache": "ram"}))
    assert not plain.images.cached and plain.monitor.holdout_batches is None
    assert cached.images.cached and cached.monitor.holdout_batches is not None
    assert cached.loader.num_workers == 0 and plain.loader.num_workers == 1  # a batch is one gather from memory
    assert "data.cache: ram: caching the training images (24 images at 32 px" in caplog.text
    assert "caching the held-out identities' images (12 images" in caplog.text
    assert same(plain_state, cached_state)
    assert numbers(plain_out) == numbers(cached_out) and cached_out[1] is not None


@pytest.mark.parametrize("then", ["auto", "none"])
def test_a_cached_run_resumes_mid_epoch_exactly_with_or_without_the_cache(faces, tmp_path, then):
    overrides = {"train": {"checkpoint_every_steps": 2, "epochs": 2}, "data": {"cache": "auto"}}
    first, straight, _ = trained(tiny_config(faces, tmp_path / "a", **overrides))
    interrupted = Trainer(tiny_config(faces, tmp_path / "b", **overrides), progress=False)
    interrupted.setup()
    original = interrupted.save
    interrupted.save = lambda: original() if interrupted.step <= 2 else None
    interrupted.fit(stop_at_epoch=1)
    assert first.images.cached and interrupted.images.cached
    # The images read are the same bytes either way.
    resumed_cfg = tiny_config(faces, tmp_path / "b", train=overrides["train"], data={"cache": then})
    resumed, state, _ = trained(resumed_cfg, resume=tmp_path / "b" / "last.pt")
    assert resumed.images.cached == (then == "auto") and same(straight, state)


def test_eval_sets_are_decoded_once_at_setup_and_score_as_before(faces, tmp_path, monkeypatch):
    pairs = tmp_path / "pairs.txt"
    lines = [f"id{i:02d}/img00.png id{i:02d}/img0{j}.png 1" for i in range(6) for j in (1, 2)]
    lines += [f"id{i:02d}/img03.png id{(i + 1) % 6:02d}/img04.png 0" for i in range(6)] * 2
    pairs.write_text("\n".join(lines) + "\n")
    sections = {"eval": {"sets": [{"pairs": str(pairs), "images": str(faces), "name": "mine"}], "folds": 2}}
    _, plain_state, plain_out = trained(tiny_config(faces, tmp_path / "a", data={"cache": "none"}, **sections))
    reads = []
    original = PairImages.read
    monkeypatch.setattr(PairImages, "read", lambda self, index: reads.append(index) or original(self, index))
    cached, cached_state, cached_out = trained(tiny_config(faces, tmp_path / "b", **sections))
    assert "mine" in cached.monitor.cached
    assert len(reads) == len(cached.monitor.sets[0][1].images)  # decoded once, not once per evaluation
    assert same(plain_state, cached_state) and numbers(plain_out) == numbers(cached_out)


def test_a_cached_rec_trains_like_reading_it_with_a_bad_record_counted(tmp_path, caplog):
    images, ranges, key = [], [], 1
    for label in range(4):
        ranges.append((key, key + 5))
        for _ in range(5):
            images.append((key, pack_payload(label, jpeg_bytes(key, size=24), id=key)))
            key += 1
    images[6] = (7, pack_payload(1, b"\xff\xd8\xff not a jpeg", id=7))
    identities = [(key + i, pack_payload([first, end], b"")) for i, (first, end) in enumerate(ranges)]
    rec = write_records(tmp_path / "t.rec", [(0, pack_payload([key, key + 4], b"")), *images, *identities])
    _, plain_state, plain_out = trained(tiny_config(rec, tmp_path / "a", data={"cache": "none"}))
    caplog.clear()
    cached, cached_state, cached_out = trained(tiny_config(rec, tmp_path / "b", data={"cache": "auto"}))
    assert cached.images.cached and cached.images.bad_images == 1
    assert "record key 7" in caplog.text and "1 images of data.root cannot be decoded" in caplog.text
    assert same(plain_state, cached_state) and numbers(plain_out) == numbers(cached_out)


def _two_rank_worker(faces, run_dir, cache) -> None:
    with tiny_embedder():
        cfg = tiny_config(faces, run_dir, data={"cache": cache, "val_identities": 2}, train={"batch_size": 4})
        trainer = Trainer(cfg, progress=False)
        trainer.setup()
        assert trainer.images.cached == (cache == "ram")
        trainer.fit()
        trainer.release()


@pytest.mark.alone  # two gloo ranks
def test_two_ranks_train_the_same_with_one_shared_cache(faces, tmp_path):
    for cache in ("none", "ram"):
        run_ranks(2, _two_rank_worker, faces, tmp_path / cache, cache)
    a, b = (torch.load(tmp_path / cache / "last.pt", weights_only=True) for cache in ("none", "ram"))
    assert same(a["embedder"], b["embedder"]) and same(a["head"], b["head"])
    assert a["best_value"] == b["best_value"]


def _failing_rank_worker(faces, run_dir, out) -> None:
    from facetrain.errors import DataError, PeerFailed

    if distributed.rank() == 0:  # this machine's /dev/shm is full
        os.posix_fallocate = lambda *args: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    with tiny_embedder():
        cfg = tiny_config(faces, run_dir, data={"cache": "ram", "cache_max_gb": 1.0}, train={"batch_size": 4})
        try:
            Trainer(cfg, progress=False).setup()
        except (DataError, PeerFailed) as exc:
            (out / f"rank{distributed.rank()}.txt").write_text(f"{type(exc).__name__}: {exc}")


@pytest.mark.alone  # two gloo ranks
def test_a_rank_that_cannot_reserve_shared_memory_stops_every_rank_once(faces, tmp_path):
    if not cache_module.SHARED_DIR.is_dir():
        pytest.skip("no /dev/shm here")
    before = {name for name in os.listdir(cache_module.SHARED_DIR) if name.startswith("facetrain-cache")}
    run_ranks(2, _failing_rank_worker, faces, tmp_path / "run", tmp_path)
    assert (tmp_path / "rank0.txt").read_text().startswith("DataError: data.cache: cannot reserve")
    assert (tmp_path / "rank1.txt").read_text().startswith("PeerFailed")  # silent: the user reads rank 0's line
    assert {name for name in os.listdir(cache_module.SHARED_DIR) if name.startswith("facetrain-cache")} == before
