"""Image decoding and the deterministic preprocessing every consumer of a checkpoint shares.

Training adds only a random horizontal flip on top of what is here; ``Preprocess.from_config`` on a
checkpoint's saved config reproduces the exact input the model was trained on.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from facetrain.config import DataConfig
from facetrain.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".pnm", ".tif", ".tiff", ".webp"}
)
# Larger images are refused before they are decoded: a 100 KB PNG can claim 144 Mpx (2 GB decoded).
MAX_IMAGE_PIXELS = 64_000_000
# Inputs are scaled to [0, 1], then normalised with these to [-1, 1] (the same for every channel).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class BadImage(DataError):
    """An image that cannot be read or decoded: a cache skips it (and counts it) rather than stopping."""


def load_image(
    path: str | Path, data: bytes | None = None, *, min_side: int | None = None, upright: bool = False
) -> Image.Image:
    """Decodes any common format (grey, RGB, RGBA, palette, 16-bit PGM) to 8-bit RGB.

    ``data``, when given, holds the encoded image (``path`` then only names it in errors).
    ``min_side``: a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size, as long as both sides stay at
    least this long (a phone photo then decodes in a fraction of the time). ``upright``: apply the
    EXIF orientation a camera recorded.
    """
    try:
        with warnings.catch_warnings():  # Pillow's own warnings (bombs, EXIF, palettes): ours say what matters
            warnings.simplefilter("ignore")
            return _decode(Image.open(io.BytesIO(data) if data is not None else path), path, min_side, upright)
    except Image.DecompressionBombError:  # over Pillow's own limit, refused inside Image.open
        raise DataError(_too_large(path, f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} Mpx")) from None
    except FileNotFoundError:
        raise DataError(f"image '{path}' not found: check the path") from None
    except PermissionError:
        raise DataError(f"cannot read image '{path}' (permission denied): check its permissions") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "not a decodable image" if data is not None else str(exc)  # PIL would print a BytesIO repr
        raise DataError(f"cannot read image '{path}': {reason}: replace or remove the file") from None


def _decode(opened: Image.Image, path: str | Path, min_side: int | None, upright: bool) -> Image.Image:
    with opened as image:
        width, height = image.size  # from the header: nothing is decoded yet
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(_too_large(path, f"{width}x{height} pixels ({width * height / 1e6:.0f} Mpx)"))
        if min_side is not None and image.format == "JPEG":
            image.draft(image.mode, (min_side, min_side))  # keeps both sides >= min_side
        image.load()
        if upright:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grey: keep the top 8 bits rather than clipping at 255.
            image = image.point(lambda v: v / 256).convert("L")
        return image.convert("RGB")


def _too_large(path: str | Path, size: str) -> str:
    return (
        f"image '{path}' would decode to {size}, over the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit (a decompression "
        "bomb, or a photo far larger than a face needs): downscale it, or remove it"
    )


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
        pixels = TF.pil_to_tensor(image)  # (3, H, W) uint8
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


def find_images(root: Path) -> tuple[list[Path], bool]:
    """Image files under ``root`` in sorted order, and whether any lie in a sub-folder.

    Hidden files and folders are ignored. Symlinked folders are followed, each real folder once.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(folder, name)
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        )
    # Sorting by path parts keeps each folder's files together (a plain string sort would not).
    found.sort(key=lambda path: path.relative_to(root).parts)
    return found, any(len(path.relative_to(root).parts) > 1 for path in found)
