"""The trainer's checkpoints: one file set whatever the world size, written by the main rank, and resume.

A checkpoint holds the whole head and its optimizer state (gathered from the ranks' slices), the
position in the epoch in samples, and every rank's random state; resuming cuts the head again for
the world size at hand and continues at the same sample of the same epoch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from facetrain import distributed
from facetrain.checkpoint import (
    check_resumable,
    check_resume_fields,
    identity_changes,
    load_checkpoint,
    save_checkpoint,
)
from facetrain.config import config_to_dict
from facetrain.errors import CheckpointError, DataError, FacetrainError
from facetrain.models import first_mismatch
from facetrain.runtime import rng_state, set_rng_state
from facetrain.training import parallel
from facetrain.training.optim import apply_hyperparameters, fit_saved_groups, trainer_lr_scales
from facetrain.training.rundir import forget_previous_run, same_file_as

log = logging.getLogger("facetrain")


class Checkpoints:
    """Mixed into ``Trainer``: what it saves and how it resumes (the attributes are the trainer's)."""

    def _last_checkpoint_note(self) -> str:
        if not self.checkpoint_path.exists():
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {self.checkpoint_path}: continue with --resume {self.checkpoint_path}"

    def _kept_note(self) -> str:
        if not self.checkpoint_path.exists():
            return "no checkpoint was written yet"
        return f"{self.checkpoint_path}, the last checkpoint before this epoch ended, is kept as it was"

    def state(self) -> dict[str, Any] | None:
        """The checkpoint, the same at any world size: the whole head, gathered on the main rank.

        Every rank must call it (the gathers are collectives); the other ranks get None.
        """
        if self.sharded:
            head, optimizer = self.head.full_state(), parallel.full_optimizer_state(self.optimizer, self.head)
        else:
            head, optimizer = self.head.state_dict(), self.optimizer.state_dict()
        every_rng = distributed.all_gather_objects(rng_state())
        if not self.main:
            return None
        state = {
            "config": config_to_dict(self.config),
            "num_classes": self.data.num_classes,
            "class_names": list(self.data.train.class_names),
            "embedder": self.embedder.state_dict(),
            "head": head,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "world_size": self.world,
            "step": self.step,
            "rng": every_rng[0],
            "best_value": self.best_value,
        }
        if self.world > 1:
            state["rank_rng"] = every_rng
        return state

    def _write(self, path: Path) -> None:
        """Every rank gathers; the main rank writes; a failure to write stops every rank."""
        state = self.state()
        error = None
        if self.main:
            try:
                save_checkpoint(state, path, self._last_checkpoint_note())  # type: ignore[arg-type]
                if path == self.checkpoint_path:
                    forget_previous_run(self.run_dir)  # what --overwrite set aside: this run has its own now
            except FacetrainError as exc:
                error = exc
        distributed.settle(error)

    def save(self) -> Path:
        self._write(self.checkpoint_path)
        return self.checkpoint_path

    def keep_best(self, also_last: bool) -> None:
        """Writes best.pt; ``also_last``: last.pt holds this very state too, so it becomes the same file (a hard
        link, or a copy where links fail) instead of a second write."""
        self._write(self.best_path)
        if not also_last:
            return
        error = None
        if self.main:
            try:
                same_file_as(self.best_path, self.checkpoint_path, "run_dir", self._last_checkpoint_note())
                forget_previous_run(self.run_dir)  # what --overwrite set aside: this run has its own last.pt now
            except FacetrainError as exc:
                error = exc
        distributed.settle(error)

    def _load(self, path: Path) -> None:
        state = self.resume_state if self.resume_state is not None else load_checkpoint(path)
        check_resume_fields(state, path)
        saved_world = state.get("world_size", 1)
        samples = state.get("samples_in_epoch", state["batch_in_epoch"] * self.config.train.batch_size * saved_world)
        for line in check_resumable(path, state["config"], config_to_dict(self.config), samples > 0):
            log.info("resuming with a changed setting: %s", line)
        if state["class_names"] != list(self.data.train.class_names):
            raise DataError(
                f"checkpoint '{path}' was trained on {len(state['class_names'])} identities, data.root now has "
                f"{self.data.num_classes}: {identity_changes(state['class_names'], self.data.train.class_names)}: "
                "resume only on the same training identities, or start a new run"
            )
        try:
            self.embedder.load_state_dict(state["embedder"])
            optimizer = fit_saved_groups(self.optimizer, state["optimizer"])  # also the older two-group layout
            if self.sharded:  # the checkpoint holds the whole head, whatever the world size that wrote it
                self.head.load_full_state(state["head"])
                parallel.load_sharded_optimizer_state(self.optimizer, optimizer, self.head)
            else:
                self.head.load_state_dict(state["head"])
                self.optimizer.load_state_dict(optimizer)
            apply_hyperparameters(self.optimizer, self.config.train, trainer_lr_scales(self.config.train))
            self.scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(
                f"checkpoint '{path}' does not fit this model ({self._misfit(state, exc)}): start a new run"
            ) from None
        self.epoch, self.step = state["epoch"], state["step"]
        self._continue_epoch(samples, saved_world)
        self.best_value = state.get("best_value")
        self._restore_rng(state, path)
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def _misfit(self, state: dict, exc: BaseException) -> str:
        """The first weight of the embedder or head that is missing, extra or of another shape; else torch's line."""
        parts = [("embedder", self.embedder, state.get("embedder"))]
        if not self.sharded:
            parts.append(("head", self.head, state.get("head")))
        for name, module, saved in parts:
            expected = module.state_dict()
            if (
                not isinstance(saved, dict)
                or saved.keys() != expected.keys()
                or any(getattr(saved[key], "shape", None) != value.shape for key, value in expected.items())
            ):
                return f"{name}: {first_mismatch(expected, saved)}"
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        return lines[-1] if lines else type(exc).__name__

    def _continue_epoch(self, samples: int, saved_world: int) -> None:
        """Continues the epoch after its first ``samples`` samples, at this run's global batch."""
        self.batch_in_epoch, self.offset = divmod(samples, self.global_batch)
        if saved_world == self.world:
            return
        # Another global batch means another number of steps per epoch: the schedule follows the epochs
        # (the step counter itself keeps counting, for logs and Partial FC's draws).
        accum = self.config.train.grad_accum_steps
        position = self.epoch * self.steps_per_epoch + math.ceil(self.batch_in_epoch / accum)
        self.scheduler.load_state_dict({"step_count": position})
        log.info(
            "the checkpoint was written by %d processes, this run has %d: the classifier is cut into %d slices, "
            "the global batch is %d instead of %d, and the learning-rate schedule continues at step %d of %d "
            "(set train.lr for the new global batch)",
            saved_world, self.world, self.world, self.global_batch, self.global_batch // self.world * saved_world,
            position, self.scheduler.total_steps,
        )  # fmt: skip

    def _restore_rng(self, state: dict[str, Any], path: Path) -> None:
        """Each rank's own random state when the world size is the same; the main rank's alone otherwise."""
        ranks = state.get("rank_rng")
        if self.world == 1:
            own = state["rng"]
        elif isinstance(ranks, list) and len(ranks) == self.world:
            own = ranks[distributed.rank()]
        else:
            return  # another world size: each rank keeps the seeded state it was built with
        try:
            set_rng_state(own)  # last, after everything that draws random numbers while building
        except Exception:  # any malformed random state; the types were checked in check_resume_fields
            raise CheckpointError(
                f"checkpoint '{path}' is damaged: rng does not hold valid random states: resume from another "
                "checkpoint, or start a new run without --resume"
            ) from None
