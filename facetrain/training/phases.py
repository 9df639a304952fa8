"""Where an epoch's time goes: training steps, waits for the next batch, verification, checkpoints, logging.

The epoch line and TensorBoard (``time/*``) show each phase, so a user sees where an epoch goes
without a profiler. A phase other than training starts and ends with a CUDA synchronisation (a few
per epoch, none per step), so the steps queued before it count as training, not as its own time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

PHASES = ("train", "data wait", "verify", "save", "log")


class PhaseClock:
    """Seconds spent in each phase since ``restart``; training is what the other phases leave of the epoch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.restart()

    def restart(self) -> None:
        self.started = time.perf_counter()
        self.seconds = dict.fromkeys(PHASES[1:], 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def waited(self, seconds: float) -> None:
        """Time the step loop spent waiting for the loader's next batch."""
        self.seconds["data wait"] += seconds

    def read(self) -> dict[str, float]:
        """Every phase's seconds and the total, since ``restart``."""
        total = time.perf_counter() - self.started
        return {"total": total, "train": max(0.0, total - sum(self.seconds.values())), **self.seconds}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def format_phases(seconds: dict[str, float]) -> str:
    """``121 s (train 114 s, data wait 0.4 s, verify 6.1 s, save 0.9 s, log 0.2 s)``; phases of no time left out."""
    parts = [f"{name} {_seconds(seconds[name])}" for name in PHASES if name == "train" or seconds.get(name, 0) >= 0.05]
    return f"{_seconds(seconds['total'])} ({', '.join(parts)})"


def phase_scalars(seconds: dict[str, float]) -> dict[str, float]:
    """TensorBoard's ``time/<phase>_s`` values of one epoch."""
    return {f"time/{name.replace(' ', '_')}_s": value for name, value in seconds.items()}


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 100 else f"{value:.1f} s" if value >= 0.95 else f"{value:.2f} s"
