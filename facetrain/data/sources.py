"""Where training faces come from, checked without decoding anything (and without torch).

A source is a folder of identity folders or a ``.rec`` with its ``.idx``. ``require_source`` refuses
a missing or wrong one with the message training would give, so a command can check its inputs
before it loads any heavy module.
"""

from __future__ import annotations

import os
from pathlib import Path

from facetrain.errors import DataError
from facetrain.files import RECORDIO, describe, require_file, require_folder

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".pnm", ".tif", ".tiff", ".webp"}
)


def require_source(root: str | Path, key: str = "data.root") -> Path:
    """``root`` if it is a folder or a ``.rec`` with its ``.idx`` beside it; else one ``DataError`` naming ``key``."""
    if not str(root):
        raise DataError(f"{key} is not set: point it at a folder with one sub-folder per identity, or at a train.rec")
    if not is_record_file(root):
        fix = f"set {key} to a folder with one sub-folder per identity, or to a train.rec"
        return require_folder(root, DataError, key, fix)
    return require_records(root, key)


def require_records(root: str | Path, key: str = "data.root") -> Path:
    """``root`` if it is a file with a ``.idx`` beside it (a RecordIO dataset); else one ``DataError``."""
    rec = require_file(root, DataError, key, f"set {key} to an insightface or im2rec train.rec, or to a folder")
    idx = rec.with_suffix(".idx")
    if not idx.is_file():
        raise DataError(
            f"{key}: '{rec}' has no index '{idx.name}' beside it: RecordIO files are read through their .idx "
            "(key<TAB>byte offset per line); copy it from where the .rec came from"
        )
    return rec


def is_record_file(root: str | Path) -> bool:
    """``root`` names a ``.rec`` (by suffix, or a file that starts with the RecordIO magic word)."""
    path = Path(root)
    if path.is_dir():
        return False
    return path.suffix.lower() == ".rec" or describe(path) == RECORDIO


# Files that sit beside photos but are no photo of any kind: passed over without a word.
NOT_PHOTOS = frozenset(
    {".txt", ".md", ".rst", ".json", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".html", ".htm", ".pdf", ".log"}
    | {".ini", ".db", ".lst", ".py", ".sh"}
)


def unsupported_files(root: Path) -> list[Path]:
    """Files under ``root`` that ``find_images`` passes over for their type (a .gif, a .heic), sorted; hidden
    ones and notes (``NOT_PHOTOS``: a README.txt, a labels.csv) aside."""
    found = [
        Path(folder, name)
        for folder, dirs, files in os.walk(root, followlinks=False)
        for name in files
        if not name.startswith(".") and Path(name).suffix.lower() not in IMAGE_EXTENSIONS | NOT_PHOTOS
        and not any(part.startswith(".") for part in Path(folder).relative_to(root).parts)
    ]  # fmt: skip
    return sorted(found, key=lambda path: path.relative_to(root).parts)


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
