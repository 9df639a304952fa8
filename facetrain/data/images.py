"""Decoding a face image file (or its bytes) to 8-bit RGB with Pillow: no torch, so image checks and
``facetrain pack``'s workers never import it."""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from facetrain.errors import DataError

# Larger images are refused before they are decoded: a 100 KB PNG can claim 144 Mpx (2 GB decoded).
MAX_IMAGE_PIXELS = 64_000_000


@contextmanager
def quiet_pillow() -> Iterator[None]:
    """Pillow's own warnings (bombs, EXIF, palettes) kept from the user: facetrain's messages say what
    matters. Enter it in the main thread only, around any threads that decode (``warnings.catch_warnings``
    is not thread-safe: one thread's exit could restore another's filters)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL\.")
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        yield


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
        opened = Image.open(io.BytesIO(data) if data is not None else path)
        if threading.current_thread() is not threading.main_thread():  # the caller's quiet_pillow() holds
            return _decode(opened, path, min_side, upright)
        with quiet_pillow():
            return _decode(opened, path, min_side, upright)
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
