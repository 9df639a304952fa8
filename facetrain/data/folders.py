"""Identities from a folder or a ``.rec``, their datasets, and the identity hold-out split."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from facetrain.config import DataConfig
from facetrain.data.layouts import scan_records
from facetrain.data.preprocess import IMAGE_EXTENSIONS, BadImage, Preprocess, load_image
from facetrain.data.records import RecordDataset, RecordImages, is_record_file
from facetrain.errors import DataError
from facetrain.files import require_folder

log = logging.getLogger("facetrain")

# (identity name, its images): image paths for a folder, record positions for a .rec
Identity = tuple[str, "list[Path] | RecordImages"]


def scan_identities(root: str | Path, key: str = "data.root") -> list[Identity]:
    """Lists ``root/<identity>/<image>`` as (identity, sorted image paths), sorted by name; or the
    identities of a ``.rec`` (insightface or im2rec layout), in label order.

    Links that lead nowhere or back into a folder above them are skipped with one warning.
    """
    if not str(root):
        raise DataError(f"{key} is not set: point it at a folder with one sub-folder per identity, or at a train.rec")
    if is_record_file(root):
        return scan_records(root, key)  # type: ignore[return-value]
    folder = require_folder(
        root, DataError, key, f"set {key} to a folder with one sub-folder per identity, or to a train.rec"
    )
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
        shipped = folder / "train.rec"
        if shipped.is_file():
            raise DataError(f"{key}: '{folder}' holds a RecordIO dataset, not identity folders: set {key}: {shipped}")
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

    bad_records = 0  # an image file that does not decode stops the run (a .rec's are replaced and counted)

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

    def read(self, index: int) -> torch.Tensor:
        """Image ``index`` as uint8 pixels (cropped and resized), as training reads it without a cache."""
        return self.preprocess.load_pixels(self.samples[index][0])

    def decode(self, index: int) -> torch.Tensor:
        """Image ``index`` as uint8 pixels; ``BadImage`` when the file cannot be read or decoded."""
        path = self.samples[index][0]
        try:
            image = load_image(path)
        except DataError as exc:
            raise BadImage(str(exc)) from None
        return self.preprocess.pixels(image, source=str(path))

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def name(self, index: int) -> str:
        return str(self.samples[index][0])


def make_dataset(identities: list[Identity], preprocess: Preprocess) -> FaceDataset | RecordDataset:
    """The dataset of scanned identities: image files, or records of a ``.rec``."""
    if identities and isinstance(identities[0][1], RecordImages):
        return RecordDataset(identities, preprocess)  # type: ignore[arg-type]
    return FaceDataset(identities, preprocess)  # type: ignore[arg-type]


@dataclass
class Datasets:
    train: FaceDataset | RecordDataset
    val: FaceDataset | RecordDataset | None

    @property
    def num_classes(self) -> int:
        return len(self.train.class_names)


def build_datasets(cfg: DataConfig) -> Datasets:
    """Scans the folders, drops small identities and holds out verification identities."""
    preprocess = Preprocess.from_config(cfg)
    identities, held_out = split_identities(cfg)
    train = make_dataset(identities, preprocess)
    val = make_dataset(held_out, preprocess) if held_out else None
    if isinstance(train, RecordDataset):
        log.info("data.root: '%s', %s", train.source.path, train.source.detail)
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
    if shared and isinstance(held_out[0][1], list) and isinstance(training[0][1], list):  # .rec names are numbers
        log.warning(
            "data.val_root: %d held-out identity names also appear in data.root (e.g. %s); "
            "held-out people should be different people",
            len(shared), shared[0],
        )  # fmt: skip
