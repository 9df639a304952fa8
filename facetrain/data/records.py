"""Datasets stored as ``.rec`` files: a file's images in identity order, and the dataset that reads them.

``layouts.scan_records`` finds the layout and the identities; here they are read during training.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facetrain.data.images import BadImage, load_image
from facetrain.data.preprocess import Preprocess, to_unit
from facetrain.data.recordio import Payload, RecordFile, unpack_payload
from facetrain.errors import DataError

log = logging.getLogger("facetrain")

_WARN_BAD = 5  # bad records each process names before it only counts them


class RecordSource:
    """A ``.rec`` and its ``.idx``: the images' keys and byte offsets, in identity order ("positions")."""

    def __init__(self, path: Path, idx: Path, layout: str, keys: np.ndarray, offsets: np.ndarray) -> None:
        self.path, self.idx, self.layout = path, idx, layout
        self.keys, self.offsets = keys, offsets
        self.file = RecordFile(path)
        self.detail = ""  # what the layout check found, for facetrain check

    def where(self, position: int) -> str:
        return self.file.where(int(self.keys[position]), int(self.offsets[position]))

    def payload(self, position: int) -> Payload:
        key, offset = int(self.keys[position]), int(self.offsets[position])
        return unpack_payload(self.file.read(key, offset), self.file.where(key, offset))

    def image(self, position: int):
        """The record's image, decoded; a broken container and an undecodable image are different errors."""
        data = self.payload(position).image
        try:
            return load_image("record", data)
        except DataError:
            raise UndecodableRecord(f"{self.where(position)}: its image cannot be decoded") from None


class UndecodableRecord(BadImage):
    """A record read whole whose image does not decode: skipped (and counted) rather than fatal."""


class RecordImages:
    """One identity's images: positions ``[start, stop)`` of a RecordSource (the "paths" of a record identity)."""

    __slots__ = ("source", "start", "stop")

    def __init__(self, source: RecordSource, start: int, stop: int) -> None:
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        return iter(range(self.start, self.stop))


RecordIdentity = tuple[str, RecordImages]


class RecordDataset(Dataset):
    """(image tensor, label) pairs read from a ``.rec``; an index may be ``(i, flip)``.

    A record whose image cannot be decoded is replaced by another image of the same identity, named
    in a warning and counted in ``bad_records`` (shared by the DataLoader workers), so one bad
    record in millions never stops a run.
    """

    def __init__(self, identities: list[RecordIdentity], preprocess: Preprocess) -> None:
        self.class_names = [name for name, _ in identities]
        self.source = identities[0][1].source
        counts = np.array([len(images) for _, images in identities], dtype=np.int64)
        self.positions = np.concatenate([np.arange(images.start, images.stop) for _, images in identities])
        self.class_starts = np.concatenate([[0], np.cumsum(counts)])  # sample i's label: the range holding i
        self.preprocess = preprocess
        self.bad = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._named = 0

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> list[int]:
        return np.repeat(np.arange(len(self.class_names)), np.diff(self.class_starts)).tolist()

    @property
    def bad_records(self) -> int:
        return int(self.bad.item())

    def name(self, index: int) -> str:
        position = int(self.positions[index])
        return f"{self.source.path.name}:{int(self.source.keys[position])}"

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = key if isinstance(key, tuple) else (key, False)
        pixels = self.read(index)
        return to_unit(pixels.flip(-1) if flip else pixels), self.label_of(index)

    def label_of(self, index: int) -> int:
        return int(np.searchsorted(self.class_starts, index, side="right")) - 1

    def read(self, index: int) -> torch.Tensor:
        """Image ``index`` as uint8 pixels, or the next of its identity that decodes (named and counted)."""
        label = self.label_of(index)
        first, count = int(self.class_starts[label]), int(self.class_starts[label + 1] - self.class_starts[label])
        for attempt in range(count):
            candidate = first + (index - first + attempt) % count
            try:
                return self.decode(candidate)  # a broken container stops the run: it is not one bad image
            except UndecodableRecord as exc:
                self._note_bad(exc, label)
        raise DataError(
            f"{self.source.where(int(self.positions[first]))}: none of the {count} images of identity "
            f"'{self.class_names[label]}' can be decoded: the file is damaged there; copy it again"
        )

    def decode(self, index: int) -> torch.Tensor:
        """Image ``index`` as uint8 pixels; ``UndecodableRecord`` (a ``BadImage``) when it does not decode."""
        position = int(self.positions[index])
        return self.preprocess.pixels(self.source.image(position), source=self.source.where(position))

    def _note_bad(self, exc: DataError, label: int) -> None:
        self.bad += 1
        self._named += 1
        if self._named <= _WARN_BAD:
            log.warning("%s: trained on another image of identity '%s' instead (bad records are skipped and "
                        "counted)", exc, self.class_names[label])  # fmt: skip


def sample_records(identities: list[RecordIdentity], count: int = 64) -> tuple[Counter, list[str], list[str]]:
    """Reads ``count`` records spread evenly over the identities' images.

    Returns ({(width, height): n}, records whose image does not decode, records that cannot be read).
    """
    ends = np.cumsum([len(images) for _, images in identities])
    chosen = np.linspace(0, ends[-1] - 1, num=min(count, int(ends[-1])), dtype=np.int64)
    sizes: Counter = Counter()
    undecodable, unreadable = [], []
    for index in chosen.tolist():
        owner = int(np.searchsorted(ends, index, side="right"))
        images = identities[owner][1]
        position = images.start + index - (int(ends[owner - 1]) if owner else 0)
        try:
            sizes[images.source.image(position).size] += 1
        except UndecodableRecord as exc:
            undecodable.append(str(exc))
        except DataError as exc:
            unreadable.append(str(exc))
    return sizes, undecodable, unreadable
