"""The finite-gradient check, kept on the device so a training step never waits for the host."""

from __future__ import annotations

import torch

NEVER = 2**62  # no non-finite step seen


class GradientGuard:
    """Notes, on the device, the first optimizer step whose gradient norm was NaN or infinite.

    ``observe`` is asynchronous; ``first_bad`` reads the note back (one sync) and is called only at
    log steps and before anything is evaluated or saved, so a run never writes a checkpoint after a
    non-finite step. With fp16 the loss scaler already skips such steps, so the guard is off.
    """

    def __init__(self, active: bool) -> None:
        self.active = active
        self.step: torch.Tensor | None = None  # first bad step (1-based), or NEVER
        self.norm: torch.Tensor | None = None  # its gradient norm
        self.lr: torch.Tensor | None = None  # its learning rate

    def observe(self, grad_norm: torch.Tensor, step: int, lr: float) -> None:
        if not self.active:
            return
        norm = grad_norm.detach().float()
        if self.step is None:
            self.step = torch.full((), NEVER, dtype=torch.int64, device=norm.device)
            self.norm, self.lr = torch.zeros_like(norm), torch.zeros_like(norm)
        first = ~torch.isfinite(norm) & (self.step == NEVER)
        self.step = torch.where(first, step, self.step)
        self.norm = torch.where(first, norm, self.norm)
        self.lr = torch.where(first, lr, self.lr)

    def first_bad(self) -> tuple[int, float, float] | None:
        """(step, gradient norm, learning rate) of the first non-finite step, or None."""
        if self.step is None:
            return None
        step = int(self.step)
        if step == NEVER:
            return None
        return step, float(self.norm), float(self.lr)  # type: ignore[arg-type]
