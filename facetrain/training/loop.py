"""The trainer's epochs: steps, verification, checkpoints and the epoch line, each phase timed (``phases``)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from facetrain import distributed
from facetrain.errors import PeerFailed, TrainingError
from facetrain.models import rival_cosines
from facetrain.runtime import autocast
from facetrain.training import parallel
from facetrain.training.messages import first_sentence, format_epoch
from facetrain.training.monitor import Evaluation
from facetrain.training.phases import format_phases, phase_scalars
from facetrain.training.tracking import Meter

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
    phases: list[dict[str, float]] = field(default_factory=list)  # each epoch's seconds by phase (``phases``)


class EpochLoop:
    """Mixed into ``Trainer``: fit, an epoch, a step (the attributes are the trainer's)."""

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
                self.clock.restart()
                stats = self.train_epoch()
                if self.monitor.active:  # then last.pt, which knows the best value (resume keeps best.pt right)
                    result.after = self.evaluate_and_keep_best(then_save=True)
                    stats["verification"] = result.after.value
                else:
                    with self.clock.phase("save"):
                        self.save()
                result.history.append(stats)
                with self.clock.phase("log"):
                    bad = self.images.bad_report()  # undecodable images, each read as another of its identity
                    if bad:
                        log.warning("%s", bad)
                seconds = self.clock.read()
                self.tensorboard.scalars(phase_scalars(seconds), self.step)
                result.phases.append(seconds)
                log.info(
                    "epoch %d/%d: %s; %s",
                    self.epoch, self.config.train.epochs, format_epoch(stats), format_phases(seconds),
                )  # fmt: skip
        if self.best_path.exists():
            result.best = self.best_path

    def evaluate_and_keep_best(self, then_save: bool = False) -> Evaluation:
        """Runs verification; keeps best.pt when ``eval.best_metric`` improves. ``then_save``: write last.pt
        too, after the verification; when best.pt is written too, last.pt is the same file, linked rather than
        written twice."""
        with self.clock.phase("verify"):
            evaluation = self.evaluate()
        value = evaluation.best_value
        improved = value is not None and (self.best_value is None or value > self.best_value)
        if improved:
            self.best_value = value
        with self.clock.phase("save"):
            if improved:  # best.pt first, as before: a kill between the two leaves last.pt's older best value
                self.keep_best(also_last=then_save)
                log.info("best.pt: %s %.4f at step %d", self.config.eval.best_metric, value, self.step)
            elif then_save:
                self.save()
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
                if evaluate:  # before the save, so that it records the best value so far
                    self.evaluate_and_keep_best(then_save=bool(save))
                elif save:
                    with self.clock.phase("save"):
                        self.save()
        self._check_gradients()  # before the epoch end evaluates and saves
        self.epoch += 1
        self.batch_in_epoch, self.offset = 0, 0
        stats = epoch_meter.read()
        stats["lr"] = self.scheduler.lr
        with self.clock.phase("log"):  # the angle histograms, and the collapse check (which may stop the run)
            self.watch.end_epoch(stats, self.epoch, self.step, first_step, self._kept_note)
        return stats

    def train_step(self, batches: Any, group: int, meters: tuple[Meter, ...]) -> torch.Tensor:
        """One optimizer step over ``group`` micro-batches; returns the gradient norm before clipping."""
        cfg = self.config.train
        self.optimizer.zero_grad(set_to_none=True)
        measure = self.watch.start_step(self.scheduler.step_count, self.step)  # sets this step's margin
        for index in range(group):
            waiting = time.perf_counter()
            batch = next(batches)
            self.clock.waited(time.perf_counter() - waiting)
            images, labels = self.model_batch(batch)
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
