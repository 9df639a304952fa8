"""Files: every file of ours written atomically, and an output's target checked before the work.

What a user's file is (``describe``, ``require_file``, ...) lives in ``facetrain.paths`` and is
re-exported here, where most modules take it from.

Every file facetrain writes (checkpoints, exported models, embeddings, reports, pairs lists, JSON,
plots, the saved config) goes through ``atomic_write``: a temporary file beside the target, fsync,
then a rename over the target. A crash, kill -9, Ctrl-C or a full disk therefore never leaves a torn
file, and never harms the file being replaced. Temporary files are named ``.<name>.XXXXXXXX.tmp``;
ones left by a killed process are removed the next time the same target is written.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from facetrain.errors import FacetrainError, OutputError
from facetrain.paths import (  # noqa: F401 (re-exported: most modules take these from here)
    KEPT,
    RECORDIO,
    TORCH_ARCHIVE,
    TORCHSCRIPT,
    describe,
    os_reason,
    require_file,
    require_folder,
    require_kind,
)

_TEMP_SUFFIX = ".tmp"
_UMASK_LOCK = threading.Lock()
_TEMP_RANDOM = r"[a-z0-9_]{8}"  # what tempfile.mkstemp puts between the prefix and the suffix


def output_path(
    path: str | Path, option: str, inputs: tuple[str | Path | None, ...] = (), writes: str | None = None
) -> Path:
    """The target of ``option``, checked before any long computation: not a folder, its folder writable.

    ``inputs``: files the command reads, which the output must never replace. ``writes``: the kind of
    file a routinely re-made output is (a JSON report, a TorchScript model); given, an existing
    checkpoint, model or record file of another kind is refused rather than replaced by it.
    """
    target = Path(path)
    for source in inputs:
        if source is not None and _same_file(target, Path(source)):
            raise OutputError(f"{option}: '{target}' is also an input of this command: write to another path")
    if target.is_dir():
        raise OutputError(f"{option}: '{target}' is a folder: give a file name (inside it, or anywhere else)")
    if writes is not None and target.is_file() and (kind := describe(target)) in KEPT and kind != writes:
        raise OutputError(
            f"{option}: '{target}' is {kind}, which {writes} would replace: give another path (or remove it first)"
        )
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = f"cannot create the folder '{folder}' ({os_reason(exc)})"
        raise OutputError(f"{option}: {problem}: choose another path") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(folder) else "permission denied"
        raise OutputError(f"{option}: cannot write into '{folder}' ({why}): choose a folder you can write to")
    return target


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def open_temp_stream(handle: int) -> BinaryIO:
    """The binary stream a temp file is written through (tests replace it to inject faults)."""
    return os.fdopen(handle, "wb")


def write_stream(path: str | Path, write: Callable[[BinaryIO], object], option: str, intact: str = "") -> Path:
    """Writes ``path`` atomically through ``write(stream)``; ``intact`` names the kept file on failure."""
    with atomic_write(path, option, intact) as temp, open_temp_stream(os.open(temp, os.O_WRONLY)) as stream:
        write(stream)
        stream.flush()
    return Path(path)


def write_text(path: str | Path, text: str, option: str) -> Path:
    return write_stream(path, lambda stream: stream.write(text.encode("utf-8")), option)


@contextmanager
def atomic_write(path: str | Path, option: str, intact: str = "") -> Iterator[Path]:
    """Yields a temp path beside ``path``; on success fsyncs it and renames it over ``path``.

    On any failure the temp file is removed and the target is untouched. An OSError (full disk,
    permissions) becomes one ``OutputError`` line; a Ctrl-C stays a KeyboardInterrupt even where a
    C++ writer (torch's zip writer) wrapped it in a RuntimeError.
    """
    target = output_path(path, option)
    remove_stale_temps(target)
    temp = None
    try:
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=_TEMP_SUFFIX)
        os.close(handle)
        temp = Path(name)
        yield temp
        with open(temp, "rb+") as stream:  # on disk before the rename, so a crash leaves no torn file
            os.fsync(stream.fileno())
        os.chmod(temp, _usual_file_mode())  # mkstemp creates 0600
        os.replace(temp, target)
    except BaseException as exc:
        if temp is not None:
            temp.unlink(missing_ok=True)
        _translate(exc, target, option, intact)
        raise


def remove_stale_temps(target: str | Path) -> tuple[int, int]:
    """Removes ``.<name>.XXXXXXXX.tmp`` files beside ``target`` (left by a killed writer): (count, bytes)."""
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.") + _TEMP_RANDOM + re.escape(_TEMP_SUFFIX))
    count = size = 0
    try:
        candidates = list(target.parent.iterdir()) if target.parent.is_dir() else []
    except OSError:
        return 0, 0
    for candidate in candidates:
        if pattern.fullmatch(candidate.name) and candidate.is_file() and not candidate.is_symlink():
            try:
                bytes_ = candidate.stat().st_size
                candidate.unlink()
            except OSError:
                continue  # not ours to remove after all (permissions): leave it
            count, size = count + 1, size + bytes_
    return count, size


def _translate(exc: BaseException, target: Path, option: str, intact: str) -> None:
    """Raises the one-line form of a failed write, or returns to let ``exc`` propagate as it is."""
    if isinstance(exc, FacetrainError) or not isinstance(exc, (OSError, RuntimeError)):
        return  # our own messages, and bugs, pass through as they are
    cause = _root_cause(exc)
    if isinstance(cause, KeyboardInterrupt) and cause is not exc:
        raise type(cause)() from None  # torch's zip writer wrapped the Ctrl-C in a RuntimeError
    if not isinstance(cause, OSError):
        return
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        problem = f"the disk is full (no space left in '{target.parent}')"
        fix = f"free some space there, or choose another {option}"
    else:
        problem = os_reason(cause)
        fix = f"choose a {option} you can write to"
    kept = intact or (f"the previous '{target}' is intact" if target.exists() else "nothing was written")
    raise OutputError(f"{option}: cannot write '{target}': {problem}: {fix}; {kept}") from None


def _root_cause(exc: BaseException) -> BaseException:
    """The KeyboardInterrupt or OSError a wrapper exception hides in its context chain, else ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (KeyboardInterrupt, OSError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return exc


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _usual_file_mode() -> int:
    """0666 less the umask: what ``open()`` would give. Under a lock: reading the umask means setting it, and
    ``align`` writes crops from several threads."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def refuse_existing(target: str | Path, option: str, overwrite: bool, beside: tuple[Path, ...] = ()) -> None:
    """One ``OutputError`` line, before any work, when ``target`` or a file written ``beside`` it exists."""
    if overwrite:
        return
    target = Path(target)
    for path in (target, *beside):
        if path.exists() or path.is_symlink():
            written = "" if path == target else f" (written beside '{target.name}')"
            raise OutputError(f"{option}: '{path}' exists{written}: give another path, or --overwrite to replace it")


@contextmanager
def created_folders(folder: str | Path) -> Iterator[None]:
    """When the block fails, removes the folders up to ``folder`` that it created and left empty."""
    missing = []
    for path in (Path(folder), *Path(folder).parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)  # deepest first
    try:
        yield
    except BaseException:
        for path in missing:
            try:
                path.rmdir()  # only if empty: never removes what someone else put there
            except OSError:
                break
        raise


def usual_folder_mode() -> int:
    """0777 less the umask: what ``mkdir`` would give (``tempfile.mkdtemp`` creates 0700)."""
    with _UMASK_LOCK:  # reading the umask means setting it; put it straight back
        mask = os.umask(0)
        os.umask(mask)
    return 0o777 & ~mask
