"""data.cache: the budget decision, shared memory, the cached batches, and undecodable images."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_faces

from facetrain.config import DataConfig
from facetrain.data import EpochSampler, Preprocess, TrainImages, as_batch, scan_identities, train_loader
from facetrain.data import cache as cache_module
from facetrain.data.cache import GB, CachePlan, shared_pixels
from facetrain.data.folders import make_dataset
from facetrain.data.preprocess import model_input, to_unit
from facetrain.errors import DataError


def plan(mode: str, budget: float = 1.0, available: float = 8.0, shared: float | None = 8.0) -> CachePlan:
    return CachePlan(mode, int(budget * GB), int(available * GB), None if shared is None else int(shared * GB))


def test_auto_budget_spans_every_set_in_order(caplog):
    caplog.set_level(logging.INFO, "facetrain")
    decider = plan("auto", budget=1.0)
    per_image = 3 * 112 * 112
    assert decider.take("training images", int(0.6 * GB) // per_image, 112)
    assert "data.cache: auto: caching the training images" in caplog.text
    assert not decider.take("verification images of eval set 'lfw'", int(0.5 * GB) // per_image, 112)
    assert "not caching the verification images of eval set 'lfw'" in caplog.text
    assert "data.cache_max_gb" in caplog.text and "decoded every time" in caplog.text
    assert decider.take("held-out identities' images", int(0.3 * GB) // per_image, 112)  # what is left still fits


def test_none_never_caches_and_ram_refuses_what_the_machine_cannot_hold():
    assert not plan("none").take("training images", 10, 32)
    assert plan("ram", budget=0.000001).take("training images", 1000, 32)  # ram ignores the budget
    with pytest.raises(DataError, match=r"data.cache: ram: the training images \(1,000,000 images at 112 px: 37.6 GB"
                       r"\) do not fit in the 8.0 GB of memory available: set data.cache: auto"):  # fmt: skip
        plan("ram").take("training images", 1_000_000, 112)


def test_the_plan_reads_its_budget_from_the_config_and_memory_from_the_container(monkeypatch):
    assert CachePlan.create(DataConfig(cache_max_gb=2.5)).budget == int(2.5 * GB)
    made = CachePlan.create(DataConfig())
    assert made.budget == made.available // 2 > 0
    monkeypatch.setattr(cache_module, "_cgroup_left", lambda: 3 * 2**20)  # a container with 3 MiB left
    assert cache_module.available_memory() == 3 * 2**20


def test_auto_names_the_limit_it_applied(caplog):
    caplog.set_level(logging.INFO, "facetrain")
    assert not plan("auto", budget=100.0, available=0.5).take("training images", 10**5, 112)
    limit = "more than the 500.0 MB left of the 500.0 MB of memory available (under data.cache_max_gb=100)"
    assert limit in caplog.text


def test_shared_pixels_leave_nothing_in_dev_shm_and_a_full_dev_shm_is_one_clear_error(monkeypatch):
    if not cache_module.SHARED_DIR.is_dir():
        pytest.skip("no /dev/shm here")
    before = ours()
    pixels = shared_pixels(5, 8, 0, 0)
    pixels.fill_(7)
    assert pixels.shape == (5, 3, 8, 8) and int(pixels.sum()) == 7 * 5 * 3 * 64
    assert ours() == before  # mapped, and its name already gone

    def full(descriptor, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DataError, match=r"cannot reserve .* in /dev/shm \(No space left on device\): give the "
                       r"container more shared memory \(docker run --shm-size"):  # fmt: skip
        shared_pixels(5, 8, 0, 0)
    assert ours() == before
    monkeypatch.setattr(os, "open", lambda *args: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(DataError, match=r"data.cache: cannot create '/dev/shm/facetrain-cache-.*' \(denied\): give"):
        shared_pixels(5, 8, 0, 0)


def test_a_cache_left_by_a_killed_creator_is_swept_and_a_living_ones_is_kept(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)  # that process has ended
    stale = tmp_path / f"facetrain-cache-{dead}-0123abcd-0"
    living = tmp_path / f"facetrain-cache-{os.getpid()}-0123abcd-0"
    other = tmp_path / "facetrain-cache-notours"
    for path in (stale, living, other):
        path.write_bytes(b"x")
    assert cache_module.sweep_stale_caches(tmp_path) == 1
    assert not stale.exists() and living.exists() and other.exists()


def ours() -> set[str]:
    return {name for name in os.listdir(cache_module.SHARED_DIR) if name.startswith("facetrain-cache")}


def images(root, size=16) -> TrainImages:
    return TrainImages(make_dataset(scan_identities(root), Preprocess(size)))


def batches(images_: TrainImages, workers: int) -> list:
    sampler = EpochSampler(len(images_), seed=3, hflip=True)
    return list(train_loader(images_, sampler, 4, workers, False, collate_fn=as_batch))


def test_cached_batches_equal_decoded_ones_also_in_a_forked_worker(tmp_path):
    faces = make_faces(tmp_path / "faces", identities=3, per_identity=4, size=(20, 24))
    plain, cached = images(faces), images(faces)
    cached.cache(plan("auto"), workers=1, progress=False)
    assert cached.cached and not plain.cached and cached.bad_images == 0
    expected = batches(plain, 0)
    for workers in (0, 1):  # a worker maps the same shared memory
        got = batches(cached, workers)
        assert len(got) == len(expected) == 3
        for (p1, f1, l1), (p2, f2, l2) in zip(expected, got, strict=True):
            assert p1.dtype == torch.uint8 and torch.equal(p1, p2) and torch.equal(f1, f2) and torch.equal(l1, l2)
    # Flipped and normalised on the device, a batch is exactly what the per-image float path gives.
    pixels, flips, labels = expected[0]
    assert labels.tolist() == [plain.dataset.labels[key[0]] for key in list(EpochSampler(len(plain), 3, True))[:4]]
    dataset = plain.dataset
    sampler = EpochSampler(len(plain), seed=3, hflip=True)
    keys = list(sampler)[:4]
    assert flips.tolist() == [flip for _, flip in keys]
    reference = torch.stack([dataset[key][0] for key in keys])
    assert torch.equal(model_input(pixels, flips, torch.device("cpu"), torch.preserve_format), reference)
    by_hand = (torch.where(flips.view(-1, 1, 1, 1), pixels.flip(-1), pixels).float() / 255 - 0.5) / 0.5
    assert torch.allclose(reference, by_hand, atol=1e-6) and torch.equal(to_unit(pixels[0]), dataset[keys[0][0]][0])


def test_an_undecodable_image_is_skipped_counted_and_read_as_another_of_its_identity(tmp_path, caplog):
    faces = make_faces(tmp_path / "faces", identities=3, per_identity=4, size=(20, 24))
    (faces / "id01" / "img02.png").write_bytes(b"\x89PNG broken")
    cached = images(faces)
    cached.cache(plan("auto"), workers=0, progress=False)
    assert cached.bad_images == 1 and "1 images of data.root cannot be decoded" in cached.bad_report()
    assert "cannot read image" in caplog.text and "id01/img02.png" in caplog.text
    broken = cached.dataset.samples.index((faces / "id01" / "img02.png", 1))
    pixels, _, labels = cached[(broken, False)]
    assert labels.tolist() == [1] and torch.equal(pixels[0], cached.dataset.read(broken + 1))


def test_an_identity_without_one_decodable_image_stops_naming_it(tmp_path):
    faces = make_faces(tmp_path / "faces", identities=3, per_identity=2, size=(20, 24))
    for name in ("img00.png", "img01.png"):
        (faces / "id02" / name).write_bytes(b"broken")
    with pytest.raises(DataError, match=r"none of the 2 images of identity 'id02' can be decoded \(cannot read image"):
        images(faces).cache(plan("auto"), workers=0, progress=False)


def test_building_shows_a_progress_bar(tmp_path, capsys):
    faces = make_faces(tmp_path / "faces", identities=2, per_identity=3, size=(20, 24))
    images(faces).cache(plan("auto"), workers=0, progress=True)
    assert "caching training images: 100%" in capsys.readouterr().err
