"""Optimizers (no weight decay on BatchNorm and biases) and the per-iteration LR schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from facetrain.config import TrainConfig


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Matrices and conv kernels decay; 1-d parameters (biases, BatchNorm scales) do not."""
    decay, no_decay = [], []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    cfg: TrainConfig, modules: Iterable[nn.Module], device: torch.device | None = None
) -> torch.optim.Optimizer:
    """On CUDA the fused kernels: one launch per step, and fp16 overflow checks without a host sync.

    Elsewhere torch's default (foreach where it applies), so CPU results are unchanged.
    """
    groups = param_groups(modules, cfg.weight_decay)
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


class WarmupDecay:
    """Linear warm-up from 0 to ``lr``, then cosine or polynomial decay to ``min_lr``.

    Stepped once per optimizer step; the learning rate is a pure function of the step, so the
    state to checkpoint is the step count alone.
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
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Re-applies the config's weight decay and momentum after loading a saved optimizer state.

    ``Optimizer.load_state_dict`` restores the saved param-group settings; a resumed run should use
    the current config's values instead (the learning rate is set by the schedule every step).
    """
    decay, no_decay = optimizer.param_groups
    decay["weight_decay"], no_decay["weight_decay"] = cfg.weight_decay, 0.0
    if cfg.optimizer == "sgd":
        for group in optimizer.param_groups:
            group["momentum"] = cfg.momentum
