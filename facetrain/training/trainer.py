"""The trainer: setup -> fit -> train_epoch -> train_step, with atomic checkpoints and exact resume."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from facetrain.checkpoint import (
    check_resumable,
    check_resume_fields,
    identity_changes,
    load_checkpoint,
    save_checkpoint,
)
from facetrain.config import Config, config_to_dict, dump_config, head_options, resolve_config
from facetrain.data import EpochSampler, build_datasets, num_classes_problem, train_loader
from facetrain.errors import CheckpointError, ConfigError, DataError, TrainingError
from facetrain.files import write_text
from facetrain.models import build_embedder, build_head
from facetrain.runtime import (
    autocast,
    resolve_device,
    resolve_precision,
    rng_state,
    seed_everything,
    set_rng_state,
)
from facetrain.training.monitor import Evaluation, Monitor
from facetrain.training.optim import WarmupDecay, apply_hyperparameters, build_optimizer
from facetrain.training.rundir import (
    check_moved,
    check_run_dir,
    clear_previous_run,
    continues,
    forget_previous_run,
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


class Trainer:
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
        self.batch_in_epoch = 0  # micro-batches completed in the current epoch
        self.step = 0  # optimizer steps completed

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.config
        self.run_dir = Path(cfg.run_dir)
        self.checkpoint_path = self.run_dir / "last.pt"
        check_run_dir(self.run_dir, self.overwrite, self.resume_path)
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.amp, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        seed_everything(cfg.seed)
        self.data = build_datasets(cfg.data)
        self._check_num_classes()
        self.embedder = build_embedder(cfg.model, cfg.data.image_size).to(self.device)
        self.head = build_head(cfg.head, cfg.model.embedding_dim, self.data.num_classes).to(self.device)
        self._setup_loaders()
        self.optimizer = build_optimizer(cfg.train, [self.embedder, self.head])
        warmup = round(cfg.train.warmup_epochs * self.steps_per_epoch)
        self.scheduler = WarmupDecay(self.optimizer, cfg.train, cfg.train.epochs * self.steps_per_epoch, warmup)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)
        self.tensorboard = TensorBoard(self.run_dir / "tensorboard")
        self.monitor = Monitor(cfg, self.data.val, self.device, self.precision, self.tensorboard)
        self.best_path = self.run_dir / "best.pt"
        self.best_value: float | None = None
        if self.resume_path:
            self._load(self.resume_path)
        sweep_stale_temps(self.run_dir)
        if self.overwrite and not continues(self.run_dir, self.resume_path):
            clear_previous_run(self.run_dir, keep=self.resume_path)  # only now: a refused run destroys nothing
        write_text(self.run_dir / "config.yaml", dump_config(cfg), "run_dir")
        log.info(
            "model: %s -> %s embedding, %s head over %d classes; device %s, amp %s; %d steps/epoch",
            cfg.model.backbone,
            cfg.model.embedding_dim,
            _describe_head(cfg),
            self.data.num_classes,
            self.device,
            self.precision.name,
            self.steps_per_epoch,
        )

    def _check_num_classes(self) -> None:
        problem = num_classes_problem(self.config.head.num_classes, self.data.num_classes)
        if problem:
            raise ConfigError(problem)

    def _setup_loaders(self) -> None:
        cfg = self.config
        pin = self.device.type == "cuda"
        self.sampler = EpochSampler(len(self.data.train), cfg.seed, cfg.data.hflip)
        self.loader = train_loader(self.data.train, self.sampler, cfg.train.batch_size, cfg.data.num_workers, pin)
        self.micro_batches = len(self.data.train) // cfg.train.batch_size
        self.steps_per_epoch = math.ceil(self.micro_batches / cfg.train.grad_accum_steps)

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
        finally:
            self.tensorboard.close()
        result.epochs_done, result.steps_done = self.epoch, self.step
        return result

    def _fit_epochs(self, result: FitResult, last_epoch: int) -> None:
        with logging_redirect_tqdm(loggers=[log]):
            if self.monitor.active:
                result.before = self.monitor.evaluate(self.embedder, self.step)
                stage = "before training" if self.step == 0 else f"at resume (epoch {self.epoch})"
                log.info("verification %s: %s", stage, result.before.detail)
            while self.epoch < last_epoch:
                stats = self.train_epoch()
                if self.monitor.active:
                    result.after = self.evaluate_and_keep_best()
                    stats["verification"] = result.after.value
                self.save()  # after the evaluation, so last.pt knows the best value (resume keeps best.pt right)
                result.history.append(stats)
                log.info("epoch %d/%d: %s", self.epoch, self.config.train.epochs, _format(stats))
        if self.best_path.exists():
            result.best = self.best_path

    def evaluate_and_keep_best(self) -> Evaluation:
        """Runs verification; writes best.pt when ``eval.best_metric`` improves."""
        evaluation = self.monitor.evaluate(self.embedder, self.step)
        value = evaluation.best_value
        if value is not None and (self.best_value is None or value > self.best_value):
            self.best_value = value
            save_checkpoint(self.state(), self.best_path, self._last_checkpoint_note())
            log.info("best.pt: %s %.4f at step %d", self.config.eval.best_metric, value, self.step)
        return evaluation

    def _last_checkpoint_note(self) -> str:
        if not self.checkpoint_path.exists():
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {self.checkpoint_path}: continue with --resume {self.checkpoint_path}"

    def train_epoch(self) -> dict[str, float]:
        cfg = self.config.train
        self.embedder.train()
        self.head.train()
        self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * cfg.batch_size)
        batches = iter(self.loader)
        epoch_meter, log_meter = Meter(), Meter()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=math.ceil(self.batch_in_epoch / cfg.grad_accum_steps),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        with bar:
            while self.batch_in_epoch < self.micro_batches:
                group = min(cfg.grad_accum_steps, self.micro_batches - self.batch_in_epoch)
                grad_norm = self.train_step(batches, group, (epoch_meter, log_meter))
                self.batch_in_epoch += group
                bar.update(1)
                if self.step % cfg.log_every_steps == 0:
                    self._log_step(log_meter, grad_norm, bar)
                if self.batch_in_epoch >= self.micro_batches:
                    break  # the epoch end evaluates and saves (see _fit_epochs)
                every = self.config.eval.every_steps
                if every and self.step % every == 0 and self.monitor.active:
                    self.evaluate_and_keep_best()  # first, so the save below records the best value so far
                if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                    self.save()
        self.epoch += 1
        self.batch_in_epoch = 0
        stats = epoch_meter.read()
        stats["lr"] = self.scheduler.lr
        return stats

    def train_step(self, batches: Any, group: int, meters: tuple[Meter, ...]) -> torch.Tensor:
        """One optimizer step over ``group`` micro-batches; returns the gradient norm before clipping."""
        cfg = self.config.train
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(group):
            images, labels = next(batches)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with autocast(self.device, self.precision):
                embeddings = self.embedder(images)
            logits, cosine = self.head(embeddings, labels)  # float32 margin math
            loss = F.cross_entropy(logits, labels)
            # Each micro-batch has the same size (drop_last), so dividing by the group size
            # makes the accumulated gradient the mean over the whole group.
            self.scaler.scale(loss / group).backward()
            correct = (cosine.argmax(dim=1) == labels).sum()
            for meter in meters:
                meter.add(loss, correct, len(labels))
        self.scaler.unscale_(self.optimizer)
        params = [p for group_ in self.optimizer.param_groups for p in group_["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
        if not self.precision.needs_scaler and not torch.isfinite(grad_norm):
            raise TrainingError(
                f"the gradient became {grad_norm.item()} at step {self.step + 1} (lr {self.scheduler.lr:.3g}): "
                f"lower train.lr{'' if cfg.grad_clip else ' or set train.grad_clip'}; {self._last_checkpoint_note()}"
            )
        self.scaler.step(self.optimizer)  # skipped by the scaler when fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return grad_norm

    def _log_step(self, meter: Meter, grad_norm: torch.Tensor, bar: tqdm) -> None:
        stats = meter.read()
        meter.reset()
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{stats['images_per_sec']:.0f}")
        self.tensorboard.scalars(
            {
                "train/loss": stats["loss"],
                "train/lr": lr,
                "train/accuracy": stats["accuracy"],
                "train/images_per_sec": stats["images_per_sec"],
                "train/grad_norm": float(grad_norm),
            },
            self.step,
        )

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.config),
            "num_classes": self.data.num_classes,
            "class_names": list(self.data.train.class_names),
            "embedder": self.embedder.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "rng": rng_state(),
            "best_value": self.best_value,
        }

    def save(self) -> Path:
        path = save_checkpoint(self.state(), self.checkpoint_path, self._last_checkpoint_note())
        forget_previous_run(self.run_dir)  # what --overwrite set aside: this run has a checkpoint of its own now
        return path

    def _load(self, path: Path) -> None:
        state = self.resume_state if self.resume_state is not None else load_checkpoint(path)
        check_resume_fields(state, path)
        mid_epoch = state["batch_in_epoch"] > 0
        for line in check_resumable(path, state["config"], config_to_dict(self.config), mid_epoch):
            log.info("resuming with a changed setting: %s", line)
        if state["class_names"] != list(self.data.train.class_names):
            raise DataError(
                f"checkpoint '{path}' was trained on {len(state['class_names'])} identities, data.root now has "
                f"{self.data.num_classes}: {identity_changes(state['class_names'], self.data.train.class_names)}: "
                "resume only on the same training identities, or start a new run"
            )
        try:
            self.embedder.load_state_dict(state["embedder"])
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            apply_hyperparameters(self.optimizer, self.config.train)
            self.scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint '{path}' does not fit this model ({reason}): start a new run") from None
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best_value = state.get("best_value")
        try:
            set_rng_state(state["rng"])  # last, after everything that draws random numbers while building
        except Exception:  # any malformed random state; the types were checked in check_resume_fields
            raise CheckpointError(
                f"checkpoint '{path}' is damaged: rng does not hold valid random states: resume from another "
                "checkpoint, or start a new run without --resume"
            ) from None
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)


def train(
    config: Config | None,
    resume: str | Path | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Trains ``config``; without one, resumes with the config saved in ``resume`` plus ``overrides``.

    The checkpoint to resume is read once, here, and handed to the trainer.
    """
    state = load_checkpoint(resume) if resume else None
    if config is None:
        if state is None:
            raise ConfigError("give a config, or a checkpoint to resume")
        # A copy: the saved config stays as it was, so resuming can list what the overrides changed.
        raw = copy.deepcopy(state["config"])
        config = resolve_config(raw, overrides or [], source=f"config inside '{resume}'")
        check_moved(Path(resume), config.run_dir, overrides or [])
    trainer = Trainer(config, resume=resume, overwrite=overwrite, progress=progress, resume_state=state)
    trainer.setup()
    return trainer.fit()


def _describe_head(cfg: Config) -> str:
    options = ", ".join(f"{name}={value}" for name, value in head_options(cfg.head).items())
    return f"{cfg.head.type} ({options})" if options else cfg.head.type


def _format(stats: dict[str, float]) -> str:
    parts = [
        f"loss {stats['loss']:.3f}",
        f"train acc {stats['accuracy']:.3f}",
        f"lr {stats['lr']:.2e}",
        f"{stats['images_per_sec']:.0f} img/s",
    ]
    if "verification" in stats:
        parts.append(f"verification acc {stats['verification']:.4f}")
    return ", ".join(parts)
