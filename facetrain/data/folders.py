"""Identity-folder datasets, the identity hold-out split, samplers and loaders."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facetrain.config import DataConfig
from facetrain.data.preprocess import IMAGE_EXTENSIONS, Preprocess
from facetrain.errors import DataError
from facetrain.files import require_folder

log = logging.getLogger("facetrain")

Identity = tuple[str, list[Path]]


def scan_identities(root: str | Path, key: str = "data.root") -> list[Identity]:
    """Lists ``root/<identity>/<image>`` as (identity, sorted image paths), sorted by name.

    Links that lead nowhere or back into a folder above them are skipped with one warning.
    """
    if not str(root):
        raise DataError(f"{key} is not set: point it at a folder with one sub-folder per identity")
    folder = require_folder(root, DataError, key, f"set {key} to a folder with one sub-folder per identity")
    identities, bad_links = [], []
    for sub in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if _bad_link(sub, folder):
            bad_links.append(sub)
            continue
        if not sub.is_dir():
            continue
        images = []
        for path in sorted(sub.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path.is_file():  # one stat for an ordinary image; links are looked at only when it fails
                images.append(path)
            elif path.is_symlink() and not path.exists():
                bad_links.append(path)
        if images:
            identities.append((sub.name, images))
    if bad_links:
        shown = ", ".join(str(link.relative_to(folder)) for link in bad_links[:3])
        more = f" and {len(bad_links) - 3} more" if len(bad_links) > 3 else ""
        log.warning("%s: skipped %d links that lead nowhere or in a loop: %s%s", key, len(bad_links), shown, more)
    if not identities:
        raise DataError(
            f"{key}: no identity folders with images in '{folder}': expected {folder}/<identity>/<image> "
            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return identities


def _bad_link(path: Path, root: Path) -> bool:
    """A link that is broken, loops on itself, or leads back to ``root`` or a folder above it."""
    if not path.is_symlink():
        return False
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop of links
        return True
    real_root = root.resolve()
    return target == real_root or target in real_root.parents


def drop_small(identities: list[Identity], minimum: int, where: str) -> list[Identity]:
    kept = [item for item in identities if len(item[1]) >= minimum]
    dropped = len(identities) - len(kept)
    if dropped:
        log.info(
            "%s: dropped %d of %d identities with fewer than %d images (data.min_images_per_identity)",
            where,
            dropped,
            len(identities),
            minimum,
        )
    return kept


class FaceDataset(Dataset):
    """(image tensor, label) pairs. An index may be ``(i, flip)`` to flip that sample."""

    def __init__(self, identities: list[Identity], preprocess: Preprocess) -> None:
        self.class_names = [name for name, _ in identities]
        self.samples = [(path, label) for label, (_, paths) in enumerate(identities) for path in paths]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = key if isinstance(key, tuple) else (key, False)
        path, label = self.samples[index]
        return self.preprocess.load(path, flip=flip), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


class EpochSampler(Sampler):
    """A seeded shuffle (and flip decision) per epoch, independent of global RNG state.

    The order and augmentation of epoch ``e`` depend only on ``(seed, e)``, so a run resumed
    mid-epoch skips exactly the samples it has seen and sees the rest exactly as before.

    With ``world`` ranks every rank draws the same order, and global batch ``i`` (``world *
    batch_size`` samples) is cut into ``world`` equal micro-batches, rank ``r`` taking the r-th. Only
    whole global batches are used, so every rank yields the same number of samples, and the ranks
    together see exactly what one process with batch ``world * batch_size`` sees. ``start`` counts
    samples of the epoch already used (by every rank together).
    """

    def __init__(self, size: int, seed: int, hflip: bool, batch_size: int = 1, rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.hflip = size, seed, hflip
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def positions(self) -> Iterator[int]:
        if self.world == 1:
            yield from range(self.start, self.size)
            return
        span = self.batch_size * self.world
        for batch in range((self.size - self.start) // span):
            first = self.start + batch * span + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        flips = (torch.rand(self.size, generator=generator) < 0.5).tolist()
        for position in self.positions():
            yield order[position], self.hflip and flips[position]

    def __len__(self) -> int:
        if self.world == 1:
            return self.size - self.start
        return (self.size - self.start) // (self.batch_size * self.world) * self.batch_size


@dataclass
class Datasets:
    train: FaceDataset
    val: FaceDataset | None

    @property
    def num_classes(self) -> int:
        return len(self.train.class_names)


def build_datasets(cfg: DataConfig) -> Datasets:
    """Scans the folders, drops small identities and holds out verification identities."""
    preprocess = Preprocess.from_config(cfg)
    identities, held_out = split_identities(cfg)
    train = FaceDataset(identities, preprocess)
    val = FaceDataset(held_out, preprocess) if held_out else None
    log.info(
        "data: %d training identities, %d images; %s",
        len(identities),
        len(train),
        f"{len(held_out)} held-out identities, {len(val)} images" if val else "no held-out identities",
    )
    return Datasets(train, val)


def num_classes_problem(wanted: int | None, found: int) -> str | None:
    """The message when ``head.num_classes`` is set and disagrees with the training identities found."""
    if wanted is None or wanted == found:
        return None
    return (
        f"head.num_classes is {wanted} but data.root has {found} training identities: "
        f"set head.num_classes: {found} or remove it"
    )


def split_identities(cfg: DataConfig, scanned: list[Identity] | None = None) -> tuple[list[Identity], list[Identity]]:
    """(training identities, held-out identities) after filtering, by split or from ``val_root``.

    ``scanned``: ``scan_identities(cfg.root)`` when the caller has it already.
    """
    scanned = scan_identities(cfg.root) if scanned is None else scanned
    identities = drop_small(scanned, cfg.min_images_per_identity, "data.root")
    held_out: list[Identity] = []
    if cfg.val_root is not None:
        held_out = drop_small(
            scan_identities(cfg.val_root, "data.val_root"), cfg.min_images_per_identity, "data.val_root"
        )
    elif cfg.val_identities:
        if cfg.val_identities > len(identities) - 2 and cfg.val_identities <= len(scanned) - 2:
            raise DataError(
                f"data.root: only {len(identities)} of the {len(scanned)} identities in '{cfg.root}' have "
                f"data.min_images_per_identity={cfg.min_images_per_identity} images or more, too few to hold out "
                f"{cfg.val_identities} and train on 2: add images, or lower data.min_images_per_identity"
            )
        if cfg.val_identities > len(identities) - 2:
            raise DataError(
                f"data.val_identities={cfg.val_identities} leaves fewer than 2 of the {len(identities)} "
                f"identities in '{cfg.root}' for training: lower data.val_identities"
            )
        chosen = set(random.Random(cfg.split_seed).sample(range(len(identities)), cfg.val_identities))
        held_out = [item for i, item in enumerate(identities) if i in chosen]
        identities = [item for i, item in enumerate(identities) if i not in chosen]
    _check_held_out(held_out, identities, "data.val_root" if cfg.val_root is not None else "data.val_identities")
    if len(identities) < 2:
        raise DataError(
            f"data.root: '{cfg.root}' has {len(identities)} usable identities; training needs at least 2 "
            "(check data.min_images_per_identity)"
        )
    return identities, held_out


def _check_held_out(held_out: list[Identity], training: list[Identity], key: str) -> None:
    if not held_out:
        return
    if len(held_out) < 2:
        raise DataError(
            f"{key}: {len(held_out)} held-out identity left after filtering; verification needs at least 2 "
            "(add identities or lower data.min_images_per_identity)"
        )
    if all(len(paths) < 2 for _, paths in held_out):
        raise DataError(
            f"{key}: no held-out identity has 2 images, so there are no same-person pairs to verify: "
            "use identities with at least 2 images"
        )
    shared = sorted({name for name, _ in held_out} & {name for name, _ in training})
    if shared:
        log.warning(
            "data.val_root: %d held-out identity names also appear in data.root (e.g. %s); "
            "held-out people should be different people",
            len(shared), shared[0],
        )  # fmt: skip


def quiet_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the training and evaluation loaders: a worker outliving its main process is quiet.

    When Ctrl-C or SIGTERM ends the main process first, a worker's handle-sharing thread
    (multiprocessing's resource_sharer) finds the connection gone and would print a traceback
    before the worker itself stops.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, trace: Any) -> None:
        if not issubclass(kind, (EOFError, ConnectionError)):
            previous(kind, value, trace)

    sys.excepthook = hook


def train_loader(
    dataset: FaceDataset, sampler: EpochSampler, batch_size: int, num_workers: int, pin_memory: bool, world: int = 1
) -> DataLoader:
    if len(dataset) < batch_size * world:
        ranks = f" x {world} ranks = {batch_size * world} (the global batch)" if world > 1 else ""
        raise DataError(
            f"train.batch_size={batch_size}{ranks} is larger than the {len(dataset)} training images: "
            "lower train.batch_size"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,  # BatchNorm needs full batches; the sampler reshuffles every epoch
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # A private generator keeps the loader from drawing on the global RNG.
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=quiet_worker,
    )


def eval_loader(dataset: FaceDataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=quiet_worker,
    )
