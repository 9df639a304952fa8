"""What ``facetrain align`` is asked for, checked without torch: the crop (size and ArcFace template),
the options, and the input and output folders. A typo is answered before the detector is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrain.data.sources import find_images, unsupported_files
from facetrain.errors import ConfigError, DataError, OutputError, brief
from facetrain.files import require_folder

# The five points of insightface's 112x112 ArcFace crop (``arcface_dst`` in insightface's
# python-package/insightface/utils/face_align.py): left eye, right eye, nose tip, left and right mouth
# corner, "left" meaning the image's left. Every insightface .rec and .bin was cropped onto these.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
SIZE_FIX = "give 112 (the ArcFace crop), a multiple of 112 or 128 such as 224 or 128, or 96x112"
FALLBACKS = ("none", "center")
MIN_FACE = 12  # P-Net's window: no smaller face can be found


@dataclass(frozen=True)
class AlignOptions:
    size: tuple[int, int] = (112, 112)  # width, height
    all_faces: bool = False
    min_face: int = 20
    fallback: str = "none"


def check_options(min_face: int, fallback: str) -> None:
    if min_face < MIN_FACE:
        raise ConfigError(
            f"--min-face {min_face} is below {MIN_FACE} px, the smallest face MTCNN can find: give 12 or more"
        )
    if fallback not in FALLBACKS:
        raise ConfigError(f"--fallback '{fallback}' is not one of {', '.join(FALLBACKS)}")


def require_photos(source: str | Path) -> Path:
    """``source`` if it is a folder (of photos: whether it holds any is ``check_folders``' to say)."""
    return require_folder(source, DataError, "--input", "give a folder of photos, flat or one sub-folder per person")


def check_folders(source: str | Path, out: str | Path) -> tuple[Path, list[Path], Path]:
    """(input folder, its photos, output folder): the input holds images, the output can be made beside it."""
    root = require_photos(source)
    paths, _ = find_images(root)
    if not paths:
        others = unsupported_files(root)
        if others:
            first = others[0].relative_to(root).as_posix()
            raise DataError(
                f"--input '{root}' has no image of a type facetrain reads, only {len(others)} other file"
                f"{'s' if len(others) > 1 else ''} (first: '{first}'): convert photos to JPEG or PNG"
            )
        raise DataError(f"--input '{root}' has no images: expected {root}/<person>/<photo> or {root}/<photo>")
    return root, paths, _check_out(root, Path(out))


def _check_out(root: Path, out: Path) -> Path:
    inside = out.resolve() == root.resolve() or root.resolve() in out.resolve().parents
    if inside:
        raise ConfigError(
            f"--out '{out}' is inside --input '{root}': the crops would be read back as photos; give a folder "
            "beside it, such as data/aligned"
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file: give a folder for the crops")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create --out '{out}' ({exc.strerror}): check the path and its permissions") from None
    return out


def parse_size(text: str | int, option: str = "--size") -> tuple[int, int]:
    """``"112"`` -> (112, 112); ``"96x112"`` -> (96, 112): (width, height) of the crop."""
    match = re.fullmatch(r"\s*(\d{1,4})(?:\s*[xX]\s*(\d{1,4}))?\s*", str(text))
    if not match:
        raise ConfigError(f"{option} {brief(text)} is not a size: {SIZE_FIX}")
    width = int(match.group(1))
    height = int(match.group(2)) if match.group(2) else width
    template(width, height, option)  # refuses the sizes with no template
    return width, height


def template(width: int = 112, height: int = 112, option: str = "--size") -> np.ndarray:
    """The five target points for a ``width`` x ``height`` crop.

    Sizes that are multiples of 112 scale the 112 template; multiples of 128 scale it by size/128 and
    shift it 8 px (scaled) to the right, keeping a margin (the rule of insightface's ``estimate_norm``).
    96x112 is the 112 template shifted 8 px left: the SphereFace / CosFace crop, whose points
    insightface's older ``face_preprocess.py`` shifted 8 px right to make the 112 one.
    """
    points = ARCFACE_112.copy()
    if (width, height) == (96, 112):
        points[:, 0] -= 8.0
        return points
    if width == height and width > 0 and width % 112 == 0:
        return points * (width / 112)
    if width == height and width > 0 and width % 128 == 0:
        ratio = width / 128
        points *= ratio
        points[:, 0] += 8.0 * ratio
        return points
    raise ConfigError(f"{option} {width}x{height} has no ArcFace template: {SIZE_FIX}")
