"""The trainer: setup -> fit -> train_epoch -> train_step, with atomic checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from facetrain import distributed
from facetrain.config import Config, dump_config
from facetrain.data import build_datasets, num_classes_problem
from facetrain.errors import ConfigError, PeerFailed, TrainingError
from facetrain.files import write_text
from facetrain.models import ShardedHead, build_embedder, build_head, rival_cosines
from facetrain.runtime import (
    CompiledOrEager,
    autocast,
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
from facetrain.training.messages import describe_head, first_sentence, format_epoch, log_parallel
from facetrain.training.monitor import Evaluation, Monitor
from facetrain.training.optim import WarmupDecay, build_optimizer, trainer_lr_scales
from facetrain.training.resume import Checkpoints
from facetrain.training.rundir import (
    check_run_dir,
    clear_previous_run,
    continues,
    sweep_stale_temps,
)
from facetrain.training.tracking import Meter, TensorBoard

log = logging.getLogger("facetrain")


@dataclass
class FitResult:
    """What a run reports: held-out verification before and after, and the last checkpoint."""

    checkpoint: Path
    resumed: bool
    epochs_done: int
    steps_done: int
    before: Evaluation | None = None
    after: Evaluation | None = None
    best: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer(Feed, Checkpoints, FineTune):
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

    # ------------------------------------------------------------------ fit
    def fit(self, stop_at_epoch: int | None = None) -> FitResult:
        """Trains to ``train.epochs`` (or stops after ``stop_at_epoch`` completed epochs)."""
        last_epoch = self.config.train.epochs if stop_at_epoch is None else stop_at_epoch
        result = FitResult(self.checkpoint_path, self.step > 0, self.epoch, self.step)
        try:
            self._fit_epochs(result, last_epoch)
        except KeyboardInterrupt:
            log.info("interrupted at epoch %d, step %d; %s", self.epoch, self.step, self._last_checkpoint_note())
            raise
        except RuntimeError as exc:
            if not distributed.lost_peer(exc):
                raise
            if distributed.peer_reported():  # it said why it stopped: nothing to add
                raise PeerFailed("a peer failed and reported why") from None
            timeout = self.config.train.dist_timeout
            raise TrainingError(
                f"lost contact with another process of this run at epoch {self.epoch}, step {self.step} (it stopped, "
                f"was killed, or did not answer within train.dist_timeout={timeout} s): {first_sentence(exc)}; "
                f"{self._last_checkpoint_note()}"
            ) from None
        finally:
            self.tensorboard.close()
        result.epochs_done, result.steps_done = self.epoch, self.step
        return result

    def release(self) -> None:
        """Lets go of the DistributedDataParallel wrapper, so that ``distributed.process_group`` can
        collect it while the process group still exists; the trainer then holds the bare embedder."""
        if hasattr(self, "model"):
            self.model = self.embedder

    def _fit_epochs(self, result: FitResult, last_epoch: int) -> None:
        with logging_redirect_tqdm(loggers=[log]):
            if self.monitor.active:
                result.before = self.evaluate()
                stage = "before training" if self.step == 0 else f"at resume (epoch {self.epoch})"
                log.info("verification %s: %s", stage, result.before.detail)
            while self.epoch < last_epoch:
                stats = self.train_epoch()
                if self.monitor.active:
                    result.after = self.evaluate_and_keep_best()
                    stats["verification"] = result.after.value
                self.save()  # after the evaluation, so last.pt knows the best value (resume keeps best.pt right)
                result.history.append(stats)
                log.info("epoch %d/%d: %s", self.epoch, self.config.train.epochs, format_epoch(stats))
                bad = self.images.bad_report()  # undecodable images, each read as another of its identity
                if bad:
                    log.warning("%s", bad)
        if self.best_path.exists():
            result.best = self.best_path

    def evaluate_and_keep_best(self) -> Evaluation:
        """Runs verification; writes best.pt when ``eval.best_metric`` improves."""
        evaluation = self.evaluate()
        value = evaluation.best_value
        if value is not None and (self.best_value is None or value > self.best_value):
            self.best_value = value
            self._write(self.best_path)
            log.info("best.pt: %s %.4f at step %d", self.config.eval.best_metric, value, self.step)
        return evaluation

    def evaluate(self) -> Evaluation:
        """Verification of the embedder that is saved: rank 0's (every rank gets the same numbers)."""
        distributed.broadcast_buffers(self.embedder)  # each rank's BatchNorm statistics moved with its own batch
        return self.monitor.evaluate(self.eval_model, self.step)

    def train_epoch(self) -> dict[str, float]:
        cfg = self.config.train
        self._train_modes()  # the embedder stays in eval mode while train.freeze_embedder_epochs hold it
        self.sampler.set_epoch(self.epoch, start=self.samples_in_epoch)
        # The epoch's first step on the schedules' scale (it follows the epochs across world sizes), also when
        # resumed partway through it, so the collapse check sees the epochs an uninterrupted run sees.
        first_step = self.scheduler.step_count - math.ceil(self.batch_in_epoch / cfg.grad_accum_steps)
        batches = iter(self.loader)
        epoch_meter, log_meter = Meter(), Meter()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=math.ceil(self.batch_in_epoch / cfg.grad_accum_steps),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            disable=not (self.progress and self.main),
            dynamic_ncols=True,
        )
        with bar:
            while self.batch_in_epoch < self.micro_batches:
                group = min(cfg.grad_accum_steps, self.micro_batches - self.batch_in_epoch)
                grad_norm = self.train_step(batches, group, (epoch_meter, log_meter))
                self.batch_in_epoch += group
                bar.update(1)
                if self.step % cfg.log_every_steps == 0:
                    self._check_gradients()
                    self._log_step(log_meter, grad_norm, bar)
                if self.batch_in_epoch >= self.micro_batches:
                    break  # the epoch end evaluates and saves (see _fit_epochs)
                every = self.config.eval.every_steps
                evaluate = every and self.step % every == 0 and self.monitor.active
                save = cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0
                if evaluate or save:
                    self._check_gradients()
                if evaluate:
                    self.evaluate_and_keep_best()  # first, so the save below records the best value so far
                if save:
                    self.save()
        self._check_gradients()  # before the epoch end evaluates and saves
        self.epoch += 1
        self.batch_in_epoch, self.offset = 0, 0
        stats = epoch_meter.read()
        stats["lr"] = self.scheduler.lr
        self.watch.end_epoch(stats, self.epoch, self.step, first_step, self._kept_note)  # may stop the run
        return stats

    def train_step(self, batches: Any, group: int, meters: tuple[Meter, ...]) -> torch.Tensor:
        """One optimizer step over ``group`` micro-batches; returns the gradient norm before clipping."""
        cfg = self.config.train
        self.optimizer.zero_grad(set_to_none=True)
        measure = self.watch.start_step(self.scheduler.step_count, self.step)  # sets this step's margin
        for index in range(group):
            images, labels = self.model_batch(next(batches))
            # DDP all-reduces the embedder's gradients once per optimizer step, after the last micro-batch.
            last = index == group - 1
            with contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync():
                loss, correct = self.forward_loss(images, labels, self.step * cfg.grad_accum_steps + index, measure)
                # Each micro-batch has the same size (drop_last), so dividing by the group size
                # makes the accumulated gradient the mean over the whole group.
                self.scaler.scale(loss / group).backward()
            for meter in meters:
                meter.add(loss, correct, len(labels) * self.world)
        self.scaler.unscale_(self.optimizer)
        grad_norm = parallel.clip_gradients(*self.param_lists, cfg.grad_clip or float("inf"))
        self.guard.observe(grad_norm, self.step + 1, self.scheduler.lr)  # on the device: no wait for the host
        self.scaler.step(self.optimizer)  # skipped by the scaler when fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return grad_norm

    def _check_gradients(self) -> None:
        """Stops the run if a step since the last check had a non-finite gradient (one host sync)."""
        bad = self.guard.first_bad()
        if bad is None:
            return
        step, norm, lr = bad
        clip = "" if self.config.train.grad_clip else " or set train.grad_clip"
        error = TrainingError(
            f"the gradient became {norm} at step {step} (lr {lr:.3g}): lower train.lr{clip}; "
            f"{self._last_checkpoint_note()}"
        )
        error.shared = True  # the norm is global: every rank stops here with this message
        raise error

    def forward_loss(
        self, images: torch.Tensor, labels: torch.Tensor, key: int, measure: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss over the global batch, correct count over the global batch) for one micro-batch.

        With ``measure``, the head's angles for this batch go to ``self.watch``.
        """
        with autocast(self.device, self.precision):
            embeddings = self.embed(images)  # no autograd through a frozen embedder
        if self.sharded:
            loss, correct, angles = self.head(embeddings, labels, key, measure)
            if angles is not None:
                self.watch.add(*angles)
            return loss, correct
        logits, cosine = self.head(embeddings, labels)  # float32 margin math
        if measure:
            index = labels.view(-1, 1)
            self.watch.add(cosine.gather(1, index)[:, 0], rival_cosines(cosine, index))
        return F.cross_entropy(logits, labels), (cosine.argmax(dim=1) == labels).sum()

    def _log_step(self, meter: Meter, grad_norm: torch.Tensor, bar: tqdm) -> None:
        stats = meter.read()
        meter.reset()
        lr = self.scheduler.lr  # the head's; the embedder's is train.embedder_lr_scale times it
        bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{stats['images_per_sec']:.0f}")
        values = {
            "train/loss": stats["loss"],
            "train/lr": lr,
            "train/accuracy": stats["accuracy"],
            "train/images_per_sec": stats["images_per_sec"],
            "train/grad_norm": float(grad_norm),
        }
        self.tensorboard.scalars(values | self.watch.step_scalars(stats["accuracy"]), self.step)
