"""Training-time meters and the TensorBoard writer."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("facetrain")


class TensorBoard:
    """A SummaryWriter created on first use, so importing facetrain stays light.

    Events are a side channel: when they cannot be written (a full disk), one warning says so and
    logging stops; training goes on, and a checkpoint that cannot be written stops it with its own message.
    """

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.folder = folder
        self._writer = None
        self._failed = not enabled  # the other ranks of a multi-process run write nothing

    def scalars(self, values: dict[str, float], step: int) -> None:
        with self._guard() as writer:
            for name, value in values.items():
                writer.add_scalar(name, value, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        """Logs text for TensorBoard's Text tab, which renders it as markdown."""
        with self._guard() as writer:
            writer.add_text(tag, markdown, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        with self._guard() as writer:
            writer.add_histogram(tag, values, step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """Logs a matplotlib Figure as an image (rendered with Agg; no pyplot)."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        pixels = np.asarray(canvas.buffer_rgba())[..., :3]  # (H, W, 3) uint8
        with self._guard() as writer:
            writer.add_image(tag, pixels, step, dataformats="HWC")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[Any]:
        writer: Any = _Discard()
        if not self._failed:
            try:
                writer = self._writer_or_new()
            except OSError as exc:
                self._fail(exc)
        try:
            yield writer
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self._failed = True
        log.warning(
            "TensorBoard: cannot write events to '%s' (%s): TensorBoard logging stops here, training goes on",
            self.folder, exc.strerror or exc,
        )  # fmt: skip

    def _writer_or_new(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):  # events that could not be flushed are lost, nothing else
                self._writer.close()
            self._writer = None


class _Discard:
    """Stands in for the writer once it has failed."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class Meter:
    """Sums loss and accuracy on the device; reads them back (one sync) only when asked."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.correct: torch.Tensor | float = 0.0
        self.images = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        self.loss_sum = self.loss_sum + loss.detach() * images
        self.correct = self.correct + correct
        self.images += images

    def read(self) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        images = max(self.images, 1)
        return {
            "loss": float(self.loss_sum) / images,
            "accuracy": float(self.correct) / images,
            "images_per_sec": self.images / seconds,
        }
