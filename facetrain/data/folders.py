"""The datasets of scanned identities (image files, or a ``.rec``'s records) for training and verification."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from facetrain.config import DataConfig
from facetrain.data.identities import Identity, split_identities
from facetrain.data.images import BadImage, load_image
from facetrain.data.preprocess import Preprocess
from facetrain.data.records import RecordDataset, RecordImages
from facetrain.errors import DataError

log = logging.getLogger("facetrain")


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
