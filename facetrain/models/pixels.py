"""Any embedder as one thing evaluation can drive: uint8 RGB pixels in, unnormalised features out.

Evaluation (pairs lists, the ``.bin`` suite, IJB templates) decodes and sizes images once, as
uint8 RGB tensors, and hands batches to a :class:`PixelEmbedder`. Each kind of model applies its
own input convention on top: a facetrain checkpoint its training normalisation under autocast
(:class:`ModuleEmbedder`), an exported or foreign model whatever its metadata or the command line
says (``facetrain.deploy`` builds those). Outputs are float32 and not normalised, so the norm is
there for the protocols that use it (IJB's quality weighting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from facetrain.data import Preprocess, model_input
from facetrain.errors import ConfigError
from facetrain.runtime import Precision, autocast

CHANNELS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its pixels: square side, centre crop, per-channel mean and std in pixel
    units (0-255; insightface's models: 127.5 and 127.5), channel order and memory layout."""

    size: int
    center_crop: int | float | None = None
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    channels: str = "rgb"
    layout: str = "nchw"

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise ConfigError(f"--channels: unknown order '{self.channels}': choose one of {', '.join(CHANNELS)}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--layout: unknown layout '{self.layout}': choose one of {', '.join(LAYOUTS)}")
        if any(value <= 0 for value in self.std):
            raise ConfigError(f"--std: {self.std} has a value <= 0: give positive numbers such as 127.5")

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.size, self.center_crop)

    def describe(self) -> str:
        mean, std = _triple(self.mean), _triple(self.std)
        return f"{self.size}x{self.size} {self.channels.upper()} {self.layout.upper()}, (x - {mean}) / {std}"

    def tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (N, 3, H, W) -> the float32 input this spec describes."""
        images = pixels.float()
        if self.channels == "bgr":
            images = images.flip(1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        images = (images - mean) / std
        return images.permute(0, 2, 3, 1).contiguous() if self.layout == "nhwc" else images


def _triple(values: tuple[float, float, float]) -> str:
    if len(set(values)) == 1:
        return f"{values[0]:g}"
    return "(" + ", ".join(f"{value:g}" for value in values) + ")"


class PixelEmbedder:
    """Embeds batches of uint8 RGB images already sized by ``preprocess``: (N, 3, S, S) -> (N, D) float32.

    ``name`` labels reports; ``normalised`` says whether the model's outputs have unit norm already
    (an export's do), which reports mention since it makes IJB's norm weighting a no-op.
    """

    name: str
    preprocess: Preprocess
    device: torch.device
    normalised: bool = False

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self) -> Callable[[], None]:
        """Puts the model in inference mode; returns what restores it."""
        return lambda: None


class ModuleEmbedder(PixelEmbedder):
    """A facetrain embedder module (from a checkpoint or a training run), fed as it was trained."""

    def __init__(
        self, module: nn.Module, preprocess: Preprocess, device: torch.device, precision: Precision, name: str = ""
    ) -> None:
        self.module, self.preprocess, self.device, self.precision = module, preprocess, device, precision
        self.name = name or "checkpoint"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        images = model_input(pixels, None, self.device, torch.preserve_format)
        with autocast(self.device, self.precision):
            return self.module(images).float()

    def prepare(self) -> Callable[[], None]:
        was_training = self.module.training
        self.module.eval()
        return lambda: self.module.train(was_training)
