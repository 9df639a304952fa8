"""The deterministic preprocessing every consumer of a checkpoint shares (decoding is ``images``).

Training adds only a random horizontal flip on top of what is here; ``Preprocess.from_config`` on a
checkpoint's saved config reproduces the exact input the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from facetrain.config import DataConfig
from facetrain.data.images import load_image
from facetrain.errors import DataError

# Inputs are scaled to [0, 1], then normalised with these to [-1, 1] (the same for every channel).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """Centre crop, resize to a square, scale to [-1, 1]."""

    image_size: int
    center_crop: int | float | None = None

    @classmethod
    def from_config(cls, data: DataConfig) -> Preprocess:
        """The preprocessing a config (or a checkpoint's saved config) trains with."""
        return cls(data.image_size, data.center_crop)

    def crop_box(self, height: int, width: int) -> tuple[int, int]:
        if self.center_crop is None:
            return height, width
        if isinstance(self.center_crop, int):
            return self.center_crop, self.center_crop
        return max(1, round(height * self.center_crop)), max(1, round(width * self.center_crop))

    def pixels(self, image: Image.Image, source: str = "image") -> torch.Tensor:
        """PIL RGB image -> (3, image_size, image_size) uint8 tensor: cropped and resized, not flipped."""
        return self.fit(TF.pil_to_tensor(image), source)

    def fit(self, pixels: torch.Tensor, source: str = "image") -> torch.Tensor:
        """(3, H, W) uint8 tensor -> (3, image_size, image_size) uint8: cropped and resized."""
        height, width = pixels.shape[-2:]
        crop_h, crop_w = self.crop_box(height, width)
        if crop_h > height or crop_w > width:
            raise DataError(
                f"data.center_crop={self.center_crop} is larger than '{source}' ({width}x{height}): "
                "use a smaller crop or a fraction such as 0.8"
            )
        if (crop_h, crop_w) != (height, width):
            pixels = TF.center_crop(pixels, [crop_h, crop_w])
        return TF.resize(pixels, [self.image_size, self.image_size], antialias=True)

    def __call__(self, image: Image.Image, flip: bool = False, source: str = "image") -> torch.Tensor:
        """PIL RGB image -> (3, image_size, image_size) float32 tensor."""
        pixels = self.pixels(image, source)
        return to_unit(TF.horizontal_flip(pixels) if flip else pixels)

    def load(self, path: str | Path, flip: bool = False, data: bytes | None = None) -> torch.Tensor:
        return self(load_image(path, data), flip=flip, source=str(path))

    def load_pixels(self, path: str | Path, data: bytes | None = None) -> torch.Tensor:
        return self.pixels(load_image(path, data), source=str(path))


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape, on any device) -> float32 in [-1, 1]: (x / 255 - MEAN) / STD.

    Scalars, not per-channel normalize: MEAN and STD are the same for every channel, and scalar
    arithmetic gives the same float32 values at a tenth of the cost (bench_data.py). Elementwise, so
    the values are the same whether an image is normalised alone or in a batch, on the CPU or a GPU.
    """
    return pixels.float().div_(255.0).sub_(MEAN[0]).div_(STD[0])


def model_input(
    pixels: torch.Tensor, flips: torch.Tensor | None, device: torch.device, memory_format: torch.memory_format
) -> torch.Tensor:
    """A batch of uint8 images (B, 3, H, W) -> the model's float input on ``device``: the images whose
    ``flips`` entry is true mirrored, then normalised (on the device: a quarter of the bytes cross to it)."""
    pixels = pixels.to(device, non_blocking=True)
    if flips is not None:
        flips = flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
        pixels = torch.where(flips, pixels.flip(-1), pixels)
    return to_unit(pixels).to(memory_format=memory_format)
