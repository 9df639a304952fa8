"""The trainer: setup -> fit -> train_epoch -> train_step, with atomic checkpoints and exact resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from facetrain import distributed
from facetrain.config import Config, dump_config
from facetrain.data import build_datasets, num_classes_problem
from facetrain.errors import ConfigError
from facetrain.files import write_text
from facetrain.models import ShardedHead, build_embedder, build_head
from facetrain.runtime import (
    CompiledOrEager,
    resolve_device,
    resolve_precision,
    seed_everything,
    use_channels_last,
    warn_compile_on_cpu,
)
from facetrain.training import parallel
from facetrain.training.angles import HeadWatch
from facetrain.training.feed import Feed
from facetrain.training.finetune import FineTune
from facetrain.training.guard import GradientGuard
from facetrain.training.loop import EpochLoop
from facetrain.training.messages import describe_head, log_parallel
from facetrain.training.monitor import Monitor
from facetrain.training.optim import WarmupDecay, build_optimizer, trainer_lr_scales
from facetrain.training.phases import PhaseClock
from facetrain.training.resume import Checkpoints
from facetrain.training.rundir import (
    check_run_dir,
    clear_previous_run,
    continues,
    sweep_stale_temps,
)
from facetrain.training.tracking import TensorBoard

log = logging.getLogger("facetrain")


class Trainer(EpochLoop, Feed, Checkpoints, FineTune):
    def __init__(
        self,
        config: Config,
        resume: str | Path | None = None,
        overwrite: bool = False,
        progress: bool = True,
        resume_state: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.resume_path = Path(resume) if resume else None
        self.resume_state = resume_state  # the checkpoint at resume_path, when the caller has read it already
        self.overwrite = overwrite
        self.progress = progress
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # global micro-batches completed in the current epoch (after ``offset``)
        self.offset = 0  # samples of the epoch used before a resume on another world size
        self.step = 0  # optimizer steps completed

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Builds everything; in a multi-process run a failure on any rank stops every rank, reported once."""
        cfg = self.config
        self.run_dir = Path(cfg.run_dir)
        self.checkpoint_path = self.run_dir / "last.pt"
        self.best_path = self.run_dir / "best.pt"
        self.world, self.main = distributed.world_size(), distributed.is_main()
        error = None
        try:
            self._build()
        except Exception as exc:  # any failure on one rank must stop every rank, not leave them waiting
            error = exc
        distributed.settle(error)  # before any collective: DDP's first broadcast is one
        error = None
        if self.main:  # files change only once every rank is known to start
            try:
                self._prepare_run_dir()
            except Exception as exc:
                error = exc
        distributed.settle(error)
        error = None
        try:
            self._cache_images()
            self._init_head()  # after the cache, which it reads; no collectives: each rank fills its own slice
        except Exception as exc:  # the caches' own collectives settle every failure that one rank alone meets
            error = exc
        distributed.settle(error)
        trained = self.eval_model = self.embedder
        if cfg.train.compile:  # one compile for training, one for evaluation; they fall back together
            if self.device.type == "cpu":
                warn_compile_on_cpu()
            trained = CompiledOrEager(self.embedder, "embedder in training")
            self.eval_model = CompiledOrEager(self.embedder, "embedder in evaluation", trained)
        self.model = parallel.wrap_embedder(trained, cfg.model.sync_bn, self.device)
        log.info(
            "model: %s -> %s embedding, %s head over %d classes; device %s, amp %s; %d steps/epoch",
            cfg.model.backbone,
            cfg.model.embedding_dim,
            describe_head(cfg, self.data.num_classes),
            self.data.num_classes,
            self.device,
            self.precision.name,
            self.steps_per_epoch,
        )
        if self.world > 1 or self.sharded:
            log_parallel(cfg, self.world, self.data.num_classes, self.head.local_classes)

    def _build(self) -> None:
        cfg = self.config
        if self.main:
            check_run_dir(self.run_dir, self.overwrite, self.resume_path)
        self.device = distributed.device_for(resolve_device(cfg.train.device))
        self.precision = resolve_precision(cfg.train.amp, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        seed_everything(cfg.seed)
        self._read_init_from()  # model.init_from's architecture, before the data is scanned
        self.data = build_datasets(cfg.data)
        self._check_num_classes()
        self.embedder = build_embedder(cfg.model, cfg.data.image_size).to(self.device)
        self._init_embedder()  # model.init_from, in a new run
        self.memory_format = torch.preserve_format
        if use_channels_last(cfg.train.channels_last, self.device):
            self.memory_format = torch.channels_last
            self.embedder = self.embedder.to(memory_format=torch.channels_last)
        if cfg.model.sync_bn and self.world > 1 and self.device.type != "cuda":
            raise ConfigError("model.sync_bn: torch's SyncBatchNorm runs on CUDA only: set model.sync_bn: false on CPU")
        self.sharded = self.world > 1 or cfg.head.sample_rate < 1.0
        if self.sharded:  # every rank builds its slice of the same head a single process would build
            self.head: torch.nn.Module = ShardedHead(cfg.head, cfg.model.embedding_dim, self.data.num_classes, cfg.seed)
        else:
            self.head = build_head(cfg.head, cfg.model.embedding_dim, self.data.num_classes)
        self.head = self.head.to(self.device)
        self._setup_loaders()
        self.optimizer = build_optimizer(
            cfg.train, [self.embedder, self.head], self.device, trainer_lr_scales(cfg.train)
        )
        self.param_lists = parallel.split_params(self.optimizer, self.head if self.sharded else None)
        warmup = round(cfg.train.warmup_epochs * self.steps_per_epoch)
        self.scheduler = WarmupDecay(self.optimizer, cfg.train, cfg.train.epochs * self.steps_per_epoch, warmup)
        self.scaler = parallel.grad_scaler(self.device, self.precision.needs_scaler)
        self.guard = GradientGuard(active=not self.precision.needs_scaler)
        self.tensorboard = TensorBoard(self.run_dir / "tensorboard", enabled=self.main)
        self.clock = PhaseClock(self.device)
        self.watch = HeadWatch(cfg, self.head, self.data.num_classes, self.steps_per_epoch, self.tensorboard)
        self.monitor = Monitor(cfg, self.data.val, self.device, self.precision, self.tensorboard)
        self.best_value: float | None = None
        if self.world > 1:  # ranks share their weights, not their dropout masks
            torch.manual_seed(cfg.seed * 1_000_003 + distributed.rank() + 1)
        if self.resume_path:
            self._load(self.resume_path)

    def _prepare_run_dir(self) -> None:
        sweep_stale_temps(self.run_dir)
        if self.overwrite and not continues(self.run_dir, self.resume_path):
            clear_previous_run(self.run_dir, keep=self.resume_path)  # only now: a refused run destroys nothing
        write_text(self.run_dir / "config.yaml", dump_config(self.config), "run_dir")

    def _check_num_classes(self) -> None:
        problem = num_classes_problem(self.config.head.num_classes, self.data.num_classes)
        if problem:
            raise ConfigError(problem)
        if self.world > self.data.num_classes:
            raise ConfigError(
                f"{self.world} ranks but only {self.data.num_classes} training identities: each rank holds a slice "
                "of the classifier, so start at most as many processes as identities"
            )
