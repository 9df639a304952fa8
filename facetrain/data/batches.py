"""The training set as the training loader reads it: a batch of uint8 pixels, their flips and labels.

The pixels come from the cache (``data.cache``) or are decoded as they are read; either way they
are the same bytes, and flip and normalisation happen on the training device (``model_input``),
so a run with the cache and one without train on bit-identical inputs.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from facetrain import distributed
from facetrain.data.cache import CachePlan, decode_into, private_pixels, shared_pixels
from facetrain.data.folders import FaceDataset
from facetrain.data.records import RecordDataset
from facetrain.errors import DataError

log = logging.getLogger("facetrain")

_NAMED = 5  # undecodable images named one by one; the rest are counted
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 pixels (B, 3, S, S), flips (B,), labels (B,)


class TrainImages(Dataset):
    """Batches of the training set (``__getitems__``, one call per batch), from the cache when there is one."""

    def __init__(self, dataset: FaceDataset | RecordDataset) -> None:
        self.dataset = dataset
        self.labels = label_tensor(dataset)
        self.pixels: torch.Tensor | None = None  # the cache: one row per image
        self.reads: torch.Tensor | None = None  # per image, the row it reads: its own, or a stand-in's
        self.bad_images = 0  # images found undecodable while caching

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[tuple[int, bool]]) -> Batch:
        indices = torch.tensor([index for index, _ in keys], dtype=torch.int64)
        flips = torch.tensor([flip for _, flip in keys], dtype=torch.bool)
        if self.pixels is None or self.reads is None:
            pixels = torch.stack([self.dataset.read(index) for index in indices.tolist()])
        else:
            pixels = self.pixels[self.reads[indices]]
        return pixels, flips, self.labels[indices]

    def __getitem__(self, key: int | tuple[int, bool]) -> Batch:
        return self.__getitems__([key if isinstance(key, tuple) else (key, False)])

    @property
    def cached(self) -> bool:
        return self.pixels is not None

    def bad_report(self) -> str | None:
        """The line that counts undecodable images so far (logged after every epoch), or None."""
        if self.bad_images:  # the same count on every rank: the main rank's says it
            if not distributed.is_main():
                return None
            return (
                f"{self.bad_images} images of data.root cannot be decoded (found while caching); each is read as "
                "another image of its identity"
            )
        if self.dataset.bad_records:
            return (
                f"{self.dataset.bad_records} reads of data.root records whose image cannot be decoded so far (this "
                "rank's reads); each was replaced by another image of its identity"
            )
        return None

    def cache(self, plan: CachePlan, workers: int, progress: bool) -> None:
        """Decodes every image once into the cache, if ``plan`` takes them. Every rank calls it (a collective).

        The ranks of a machine share one copy and decode a share of it each, with their workers.
        """
        count, size = len(self), self.dataset.preprocess.image_size
        place, mates, first, most = distributed.node_peers()
        shared = plan.can_share(count, size)
        if not plan.take("training images", count, size, copies=1 if shared else most):
            return
        pixels = shared_pixels(count, size, place, first) if shared else None
        part = range(*distributed.split(count, place, mates)) if shared else range(count)
        error, bad = None, []
        try:
            pixels = private_pixels(count, size) if pixels is None else pixels
            bad = decode_into(pixels, self.dataset, part, 0, workers, "caching training images", progress)
        except Exception as exc:  # every rank must reach the settle below
            error = exc
        distributed.settle(error)
        assert pixels is not None
        found = sorted({item for peer in distributed.all_gather_objects(bad) for item in peer})
        self.reads = stand_ins(self.labels, found, self.dataset.class_names)
        self.pixels, self.bad_images = pixels, len(found)
        if not distributed.is_main():  # every rank found the same: the main rank says it
            return
        for index, reason in found[:_NAMED]:  # the line an uncached read of a .rec logs
            name = self.dataset.class_names[int(self.labels[index])]
            log.warning("%s: trained on another image of identity '%s' instead (bad images are skipped and counted)",
                        reason, name)  # fmt: skip
        if len(found) > _NAMED:
            log.warning("data.root: %d more images cannot be decoded (each is read as another image of its identity)",
                        len(found) - _NAMED)  # fmt: skip


def label_tensor(dataset: FaceDataset | RecordDataset) -> torch.Tensor:
    """Every image's label, without a Python list per image for a ``.rec`` (WebFace42M has 42M)."""
    if isinstance(dataset, RecordDataset):
        counts = torch.from_numpy(np.diff(dataset.class_starts))
        return torch.repeat_interleave(torch.arange(len(counts)), counts)
    return torch.tensor(dataset.labels, dtype=torch.int64)


def stand_ins(labels: torch.Tensor, found: list[tuple[int, str]], names: list[str]) -> torch.Tensor:
    """Per image, the image read in its place: itself, or for a bad one (``found``: index, reason) the next
    good image of its identity (wrapping around), the rule a ``.rec`` read without a cache follows."""
    reads = torch.arange(len(labels))
    if not found:
        return reads
    bad = [index for index, _ in found]
    usable = torch.ones(len(labels), dtype=torch.bool)
    usable[bad] = False
    starts = torch.searchsorted(labels, torch.arange(int(labels[-1]) + 2))  # labels are grouped in order
    for index in bad:
        label = int(labels[index])
        first, count = int(starts[label]), int(starts[label + 1] - starts[label])
        order = [first + (index - first + step) % count for step in range(count)]
        good = [candidate for candidate in order if usable[candidate]]
        if not good:
            reason = next(why for where, why in found if first <= where < first + count)
            raise DataError(f"data.root: none of the {count} images of identity '{names[label]}' can be decoded "
                            f"({reason}): replace them, or remove the identity")  # fmt: skip
        reads[index] = good[0]
    return reads


def as_batch(batch: Any) -> Any:
    """The training loader's ``collate_fn``: ``TrainImages`` hands whole batches already."""
    return batch
