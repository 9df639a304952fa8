"""Optimizers (no weight decay on BatchNorm and biases) and the per-iteration LR schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from facetrain.config import TrainConfig


def param_groups(
    modules: Iterable[nn.Module], weight_decay: float, lr_scales: Iterable[float] | None = None
) -> list[dict]:
    """Two groups per module, in order: its matrices and conv kernels (decayed), then its 1-d parameters
    (biases, BatchNorm scales: not decayed). Each group's ``lr_scale`` (1.0 unless ``lr_scales`` gives the
    module's) multiplies the schedule's learning rate. Parameters that do not train are left out."""
    modules = list(modules)
    scales = [1.0] * len(modules) if lr_scales is None else list(lr_scales)
    groups = []
    for module, scale in zip(modules, scales, strict=True):
        decay, no_decay = [], []
        for param in module.parameters():
            if param.requires_grad:
                (decay if param.ndim > 1 else no_decay).append(param)
        groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": scale})
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": scale})
    return groups


def trainer_lr_scales(cfg: TrainConfig) -> tuple[float, float]:
    """The trainer's modules are (embedder, head): their learning rates relative to ``train.lr``."""
    return (cfg.embedder_lr_scale, 1.0)


def build_optimizer(
    cfg: TrainConfig,
    modules: Iterable[nn.Module],
    device: torch.device | None = None,
    lr_scales: Iterable[float] | None = None,
) -> torch.optim.Optimizer:
    """On CUDA the fused kernels: one launch per step, and fp16 overflow checks without a host sync.

    Elsewhere torch's default (foreach where it applies), so CPU results are unchanged.
    """
    groups = param_groups(modules, cfg.weight_decay, lr_scales)
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


class WarmupDecay:
    """Linear warm-up from 0 to ``lr``, then cosine or polynomial decay to ``min_lr``.

    Stepped once per optimizer step; the learning rate is a pure function of the step, so the
    state to checkpoint is the step count alone. ``lr`` is the schedule's value; each param group
    gets it times the group's ``lr_scale`` (1.0 where the group has none).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, warmup_steps: int) -> None:
        self.optimizer = optimizer
        self.peak, self.floor = cfg.lr, cfg.min_lr
        self.kind, self.power = cfg.schedule, cfg.poly_power
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(warmup_steps, self.total_steps)
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = (1.0 - progress) ** self.power
        return self.floor + (self.peak - self.floor) * factor

    @property
    def lr(self) -> float:
        return self.lr_at(self.step_count)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


def apply_hyperparameters(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, lr_scales: Iterable[float] | None = None
) -> None:
    """Re-applies the config's weight decay, momentum and learning-rate scales after loading a saved
    optimizer state (laid out by ``param_groups``: two groups per module).

    ``Optimizer.load_state_dict`` restores the saved param-group settings; a resumed run should use
    the current config's values instead (the learning rate is set by the schedule every step).
    """
    groups = optimizer.param_groups
    scales = [1.0] * (len(groups) // 2) if lr_scales is None else list(lr_scales)
    for index, group in enumerate(groups):
        group["weight_decay"] = cfg.weight_decay if index % 2 == 0 else 0.0
        group["lr_scale"] = scales[index // 2]
        if cfg.optimizer == "sgd":
            group["momentum"] = cfg.momentum


def fit_saved_groups(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (an optimizer state dict) in ``optimizer``'s group layout.

    Checkpoints written before the learning-rate scales hold two groups, (all decayed, all not decayed),
    each listing the modules' parameters in module order; now each module has its own two groups. The
    per-parameter state (momentum buffers, Adam moments) is renumbered to follow; anything else is
    returned unchanged, for ``load_state_dict`` to judge.
    """
    groups, old_groups = optimizer.param_groups, saved.get("param_groups")
    if not isinstance(old_groups, list) or len(old_groups) != 2 or len(groups) <= 2 or len(groups) % 2:
        return saved
    sizes = [len(group["params"]) for group in groups]
    starts = [sum(sizes[:index]) for index in range(len(groups))]
    # The old numbering walks the decayed groups of every module, then the not-decayed ones.
    old_order = [starts[g] + i for parity in (0, 1) for g in range(parity, len(groups), 2) for i in range(sizes[g])]
    if [len(group.get("params", ())) for group in old_groups] != [sum(sizes[0::2]), sum(sizes[1::2])]:
        return saved
    renumber = dict(enumerate(old_order))
    new_groups = [
        {**old_groups[index % 2], "params": list(range(starts[index], starts[index] + sizes[index]))}
        for index in range(len(groups))
    ]
    state = {renumber[key]: value for key, value in saved["state"].items() if key in renumber}
    return {**saved, "state": state, "param_groups": new_groups}
