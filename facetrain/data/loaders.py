"""Samplers and loaders: the seeded per-epoch order shared by every rank, and the DataLoaders of each stage."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facetrain.errors import DataError


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
    dataset: Dataset,
    sampler: EpochSampler,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    world: int = 1,
    collate_fn: Callable[[Any], Any] | None = None,
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
        collate_fn=collate_fn,
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=quiet_worker,
    )
