"""Watching a margin head train: the margin warm-up, angle statistics, and the collapse detector.

A margin head trains when each image's angle to its own class centre (theta_y) falls below its angle
to the nearest other centre (the rival), by the margin. From scratch with a hard margin (ArcFace
m = 0.5 on a few thousand images) it can instead collapse: every centre turns the same way, every
cosine reaches 1, and the loss stalls at ln(1 + (C - 1) e^(s (1 - t))), t being the true class's
logit at cos = 1 (cos m for ArcFace). ``HeadWatch`` ramps the margin in, logs the angles to
TensorBoard, and names a collapse when it happens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from facetrain import distributed
from facetrain.config import MARGIN_WARMUP_EPOCHS, Config, HeadConfig, margin_warmup
from facetrain.errors import TrainingError
from facetrain.models import MarginHead, ShardedHead, angle
from facetrain.training.tracking import TensorBoard

log = logging.getLogger("facetrain")

CENTER_SAMPLE = 4096  # class centres (over all ranks) whose mean pairwise cosine stands for all of them
COLLAPSED_COSINE = 0.9  # mean cosine between centres above which they count as collapsed (healthy: ~0)


class MarginSchedule:
    """The share of the margin applied at each optimizer step: 0 for ``warm_start_epochs``, then a
    linear ramp to 1 over ``margin_warmup_epochs``. A function of the step alone, so a resumed run
    applies the same margins as one that never stopped.
    """

    def __init__(self, cfg: HeadConfig, steps_per_epoch: int) -> None:
        self.hold = round(cfg.warm_start_epochs * steps_per_epoch)
        self.ramp = round(margin_warmup(cfg) * steps_per_epoch)

    def factor(self, step: int) -> float:
        """Share of the margin for the step that follows ``step`` completed optimizer steps."""
        if step < self.hold:
            return 0.0
        return 1.0 if step - self.hold >= self.ramp else (step - self.hold) / self.ramp

    @property
    def full_from(self) -> int:
        """The first step with the whole margin."""
        return self.hold + self.ramp


def margin_head(head: nn.Module) -> MarginHead | None:
    """The margin head inside ``head`` (a replicated or sharded one); None for softmax."""
    inner = head.head if isinstance(head, ShardedHead) else head
    return inner if isinstance(inner, MarginHead) else None


@torch.no_grad()
def mean_center_cosine(head: MarginHead, sample: int = CENTER_SAMPLE) -> float:
    """Mean cosine between distinct class centres (sub-centres), over an even sample of the rows.

    With unit rows u_i, the sum over pairs i != j of u_i . u_j is |sum u|^2 - sum |u_i|^2, so the
    mean needs one pass and, across ranks, one all-reduce of a vector. Every rank must call it.
    """
    rows = head.class_centers
    take = min(rows.shape[0], math.ceil(sample / distributed.world_size()))
    picked = torch.linspace(0, rows.shape[0] - 1, take, device=rows.device).round().long()
    unit = F.normalize(rows[picked].float(), dim=1)
    count = torch.tensor([float(take)], device=rows.device)
    sums = torch.cat([unit.sum(dim=0), count, unit.square().sum().view(1)])
    sums = distributed.all_reduce(sums)
    total, count, squares = sums[:-2], float(sums[-2]), float(sums[-1])
    return 0.0 if count < 2 else (float(total @ total) - squares) / (count * (count - 1))


def collapsed_loss(head: MarginHead, num_classes: int) -> float:
    """ln(1 + (C - 1) e^(s (o - t))): the loss when every cosine is 1 (t, o: the true and other logits there)."""
    gap = head.scale * (head.collapsed_other() - head.collapsed_target())
    others = max(num_classes - 1, 1)
    return gap + math.log(others) + math.log1p(math.exp(-gap) / others)


class HeadWatch:
    """Per step: the margin for the step, and on log steps the head's angles. Per epoch: histograms,
    the mean theta_y for the epoch line, and the collapse check (once the whole margin is on).
    """

    def __init__(
        self, config: Config, head: nn.Module, num_classes: int, steps_per_epoch: int, tensorboard: TensorBoard
    ) -> None:
        self.config, self.head, self.num_classes = config, margin_head(head), num_classes
        self.schedule = MarginSchedule(config.head, steps_per_epoch)
        self.every = config.train.log_every_steps
        self.tensorboard = tensorboard
        self.warned = False
        self.step_angles: list[torch.Tensor] = []  # (2, N) degrees: theta_y, rival; this log step's batches
        self.epoch_angles: list[torch.Tensor] = []  # the same for every measured batch of the epoch

    def start_step(self, position: int, step: int) -> bool:
        """Sets the margin for the next step; True when that step is measured (it will be logged).

        ``position`` is the step on the schedules' scale (the learning rate's: after a resume on
        another world size it follows the epochs), ``step`` the optimizer steps done (the log's scale).
        """
        if self.head is None:
            return False
        self.head.margin_factor = self.schedule.factor(position)
        return (step + 1) % self.every == 0

    def add(self, target_cos: torch.Tensor, rival_cos: torch.Tensor) -> None:
        """One micro-batch's (N,) cosines to the true class and to the nearest other class."""
        degrees = torch.rad2deg(angle(torch.stack([target_cos.detach(), rival_cos.detach()]).float()))
        self.step_angles.append(degrees)
        self.epoch_angles.append(degrees)

    def step_scalars(self, accuracy: float) -> dict[str, float]:
        """TensorBoard scalars for a log step (every rank calls it: the centre cosine is a collective)."""
        values = {"train/accuracy_over_chance": accuracy * self.num_classes}
        if self.head is None:
            return values
        values["train/center_cosine"] = mean_center_cosine(self.head)
        values["train/margin_factor"] = self.head.margin_factor
        values.update({f"train/margin/{name}": self.head.margin(name) for name in self.head.MARGINS})
        if self.step_angles:
            theta_y, rival = torch.cat(self.step_angles, dim=1).mean(dim=1).tolist()
            values |= {"train/theta_y_deg": theta_y, "train/theta_rival_deg": rival}
        self.step_angles.clear()
        return values

    def end_epoch(
        self, stats: dict[str, float], epoch: int, step: int, first_step: int, checkpoint_note: Callable[[], str]
    ) -> None:
        """Histograms and the epoch's mean theta_y (into ``stats``); then the collapse check, which
        warns, or with ``train.on_collapse: stop`` raises (before the epoch's checkpoint is written).
        ``first_step``: the epoch's first step on the schedules' scale (see ``start_step``).
        """
        if self.head is None:
            return
        if self.epoch_angles:
            theta_y, rival = torch.cat(self.epoch_angles, dim=1).cpu()
            stats["theta_y"] = float(theta_y.mean())
            self.tensorboard.histogram("angles/theta_y_deg", theta_y, step)
            self.tensorboard.histogram("angles/theta_rival_deg", rival, step)
        self.epoch_angles.clear()
        if self.warned or first_step < self.schedule.full_from:
            return  # one warning per run, and only once the whole margin has been on for an epoch
        problem = self.collapse(stats, mean_center_cosine(self.head), epoch, step)
        if problem is None:
            return
        self.warned = True
        if self.config.train.on_collapse == "stop":
            error = TrainingError(f"{problem}; {checkpoint_note()}")
            error.shared = True  # every rank sees the same numbers and stops with this message
            raise error
        if distributed.is_main():  # every rank found it: say it once
            log.warning("%s; --set train.on_collapse=stop stops a run here", problem)

    def collapse(self, stats: dict[str, float], cosine: float, epoch: int, step: int) -> str | None:
        """The collapse message, or None for a healthy head."""
        head, classes = self.head, self.num_classes
        assert head is not None
        chance, stalled_at = 1.0 / classes, collapsed_loss(head, classes)
        centers = cosine > COLLAPSED_COSINE
        # Partial FC's loss and accuracy are over the sampled classes: only the centres can tell there.
        # Near chance: at most twice it, or chance + 0.1 where that is lower (with 2 classes twice chance is 1).
        near_chance = stats["accuracy"] <= min(2 * chance, chance + 0.1)
        stalled = self.config.head.sample_rate == 1.0 and near_chance
        stalled = stalled and abs(stats["loss"] - stalled_at) <= 0.1 * stalled_at
        if not (centers or stalled):
            return None
        seen = [
            f"the class centres point the same way (mean cosine {cosine:.3f} between them; a healthy head keeps "
            f"it near 0)"
            if centers
            else f"mean cosine between class centres {cosine:.3f}",
            f"training accuracy {stats['accuracy']:.3f} (chance: 1/{classes} = {chance:.3f})",
            f"loss {stats['loss']:.3f} (collapsed value: {stalled_at:.3f})",
        ]
        return (
            f"the {self.config.head.type} head collapsed by epoch {epoch} (step {step}): {'; '.join(seen)}. The "
            f"margin is too hard to learn from this start, and a collapsed head does not recover: start a new run "
            f"(another run_dir, or --overwrite) with {remedies(self.config.head, head)}"
        )


def remedies(cfg: HeadConfig, head: MarginHead) -> str:
    """The --set options that let a collapsed margin head train, in the order they did on Extended Yale B
    (docs/training.md: Training from scratch)."""
    longer = max(2 * margin_warmup(cfg), MARGIN_WARMUP_EPOCHS.get(cfg.type, 2.0))
    fixes = [f"--set head.margin_warmup_epochs={longer:g} (ramp the margin in slower)"]
    if cfg.s != "auto":
        fixes.append(f"--set head.s=auto (scale {head.scale:g} -> sqrt(2) ln(C - 1), AdaCos's)")
    fixes.append(f"--set head.warm_start_epochs={max(cfg.warm_start_epochs + 1, 1):g} (train without a margin first)")
    additive = [margin for margin in head.MARGINS if margin != "m1"]  # combined's m1 multiplies the angle
    name = max(additive, key=lambda margin: getattr(head, margin))  # the largest: combined's m2 or m3
    if getattr(head, name) > 0:
        fixes.append(f"--set head.{name}={0.6 * getattr(head, name):.2g} (a smaller margin: the last resort)")
    return ", or ".join(fixes)
