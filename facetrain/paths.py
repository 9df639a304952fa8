"""What a user's path is, named by its first bytes, and the checks that say so before it is read.

``describe`` tells a file by its first bytes (a folder, a text file, a PNG, a TorchScript model, a
torch.save archive...), so a wrong file is reported as what it is, never as "not found" or
"corrupted". ``require_file``, ``require_kind`` and ``require_folder`` check a path's kind before it is
read. Everything here needs the standard library only: a wrong path is answered before torch loads.
"""

from __future__ import annotations

import errno
import stat
import zipfile
from pathlib import Path

from facetrain.errors import FacetrainError

RECORDIO = "an MXNet RecordIO file"
_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"), (b"BM", "a BMP image"),
    (b"P5", "a PGM image"), (b"P6", "a PPM image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
    (b"\x80", "a Python pickle"), (b"\x1f\x8b", "a gzip archive"), (b"\xce\xd7\x23\x0a", RECORDIO),
)  # fmt: skip
TORCHSCRIPT = "an exported TorchScript model (written by facetrain export or torch.jit.save)"
TORCH_ARCHIVE = "a torch.save archive (a checkpoint or weights file)"
# What an output that is re-made routinely (a report, an export) never replaces unless it is one itself.
KEPT = (TORCH_ARCHIVE, TORCHSCRIPT, RECORDIO, "a Python pickle")


def describe(path: str | Path) -> str:
    """What ``path`` is, as a phrase for a message ("a folder", "a text file", "a PNG image", ...)."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        if stat.S_ISDIR(mode):
            return "a folder"
        if not stat.S_ISREG(mode):
            return "not a regular file (a device, pipe or socket)"
        with file.open("rb") as stream:
            head = stream.read(4096)
    except OSError as exc:
        return f"unreadable ({os_reason(exc)})"
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return _describe_zip(file)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # text cut inside a character at the 4096-byte mark is still text
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else None
    if text is not None and "\x00" not in text:
        return "a text file"
    return "a binary file of unknown kind"


def _describe_zip(file: Path) -> str:
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "a damaged or truncated zip archive"
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return TORCHSCRIPT
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return TORCH_ARCHIVE
    if names and all(name.endswith(".npy") for name in names):
        return "a NumPy .npz archive"
    return "a zip archive"


def require_file(
    path: str | Path, error: type[FacetrainError], what: str, fix: str, look_for: tuple[str, ...] = ()
) -> Path:
    """``path`` if it is a regular file; else one ``error`` line saying what it is instead.

    ``look_for``: file names to suggest when ``path`` is a folder that holds one of them.
    """
    file = Path(path)
    if file.is_dir():
        inside = [file / name for name in look_for if (file / name).is_file()]
        hint = f"did you mean '{inside[0]}'?" if inside else fix
        raise error(f"{what} '{file}' is a folder, not a file: {hint}")
    if not file.exists():
        broken = " (a link to a missing file)" if file.is_symlink() else ""
        raise error(f"{what} '{file}' not found{broken}: {fix}")
    if not file.is_file():
        raise error(f"{what} '{file}' is {describe(file)}: {fix}")
    return file


def require_kind(
    path: str | Path,
    error: type[FacetrainError],
    what: str,
    fix: str,
    kinds: tuple[str, ...],
    look_for: tuple[str, ...] = (),
) -> Path:
    """``require_file``, then one ``error`` line when ``describe`` tells the file is none of ``kinds``.

    Reads a few bytes and never imports torch: a PNG or a text file given as a checkpoint is refused
    at once, with what it is.
    """
    file = require_file(path, error, what, fix, look_for)
    kind = describe(file)
    if kind not in kinds:
        raise error(f"{what} '{file}' cannot be used: it is {kind}: {fix}")
    return file


def require_folder(path: str | Path, error: type[FacetrainError], what: str, fix: str) -> Path:
    """``path`` if it is a folder; else one ``error`` line saying what it is instead."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise error(f"{what}: '{folder}' is {describe(folder)}, not a folder: {fix}")
    broken = " (a link to a missing folder)" if folder.is_symlink() else ""
    raise error(f"{what}: folder '{folder}' does not exist{broken}: {fix}")


def os_reason(exc: OSError) -> str:
    """An OSError's cause in a few lower-case words: permission denied, file name too long."""
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (exc.strerror or type(exc).__name__).lower()
