"""The trainer's input: the seeded sampler, the training loader, the caches, and a batch on the device.

A mixin of ``Trainer``: it reads the trainer's ``config``, ``data``, ``device``, ``world``,
``monitor``, ``progress`` and ``main``, and sets ``sampler``, ``images``, ``loader``,
``global_batch`` and ``steps_per_epoch``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from facetrain import distributed
from facetrain.data import CachePlan, EpochSampler, TrainImages, as_batch, model_input, train_loader


class Feed:
    config: Any
    data: Any
    device: torch.device
    memory_format: torch.memory_format
    monitor: Any
    world: int
    progress: bool
    main: bool
    batch_in_epoch: int
    offset: int

    def _setup_loaders(self) -> None:
        cfg = self.config
        self.global_batch = cfg.train.batch_size * self.world
        self.sampler = EpochSampler(
            len(self.data.train), cfg.seed, cfg.data.hflip, cfg.train.batch_size, distributed.rank(), self.world
        )
        self.images = TrainImages(self.data.train)
        self.loader = self._train_loader(cfg.data.num_workers)
        self.steps_per_epoch = math.ceil(self.micro_batches / cfg.train.grad_accum_steps)

    def _train_loader(self, workers: int) -> Any:
        cfg, pin = self.config, self.device.type == "cuda"
        return train_loader(self.images, self.sampler, cfg.train.batch_size, workers, pin, self.world, as_batch)

    @property
    def samples_in_epoch(self) -> int:
        """Samples of the current epoch used so far, by every rank together."""
        return self.batch_in_epoch * self.global_batch + self.offset

    @property
    def micro_batches(self) -> int:
        """Global micro-batches in the current epoch, counted after ``offset`` (whole global batches only)."""
        return (len(self.data.train) - self.offset) // self.global_batch

    def _cache_images(self) -> None:
        """``data.cache``: decodes the training and verification images once, then reads batches from memory."""
        cfg = self.config.data
        if cfg.cache == "none":
            return
        plan = CachePlan.create(cfg)
        show = self.progress and self.main
        self.images.cache(plan, cfg.num_workers, show)
        self.monitor.cache(plan, show)
        if self.images.cached:  # a batch is one gather from memory: workers would only add copies
            self.loader = self._train_loader(0)

    def model_batch(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, labels) on the device, from a loader's (uint8 pixels, flips, labels) or from
        (float images, labels) already normalised."""
        if len(batch) == 3:
            pixels, flips, labels = batch
            images = model_input(pixels, flips, self.device, self.memory_format)
        else:
            images, labels = batch
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)
