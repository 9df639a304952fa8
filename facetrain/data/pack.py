"""``facetrain pack`` and ``facetrain unpack``: identity folders to insightface ``.rec`` files and back.

``pack`` writes the insightface layout: image records at keys 1..N (label = the identity's number),
one record per identity at keys N+1..N+K holding its ``[first, end)`` image keys, then the header
record at key 0 holding ``[N+1, N+1+K)``, written last. ``property`` holds ``K,height,width``. JPEG
files are stored byte for byte; other formats are re-encoded (JPEG at a stated quality, or PNG).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from facetrain.data.identities import scan_identities
from facetrain.data.images import load_image
from facetrain.data.recordio import EXACT_KEYS, RecordWriter, pack_payload
from facetrain.data.sources import is_record_file, require_records
from facetrain.errors import DataError, OutputError
from facetrain.files import (
    atomic_write,
    created_folders,
    os_reason,
    output_path,
    refuse_existing,
    require_file,
    usual_folder_mode,
)

_JPEG = b"\xff\xd8\xff"
_EXTENSIONS = (
    (_JPEG, ".jpg"), (b"\x89PNG", ".png"), (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"),
    (b"P5", ".pgm"), (b"P2", ".pgm"), (b"P6", ".ppm"), (b"P3", ".ppm"),
)  # fmt: skip


@dataclass
class PackResult:
    rec: Path
    identities: int = 0
    images: int = 0
    stored_as_is: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    image_size: tuple[int, int] = (0, 0)  # the most common (height, width)
    bytes: int = 0
    seconds: float = 0.0


Encoded = tuple[bytes | None, str, tuple[int, int], bool]


def encode_file(job: tuple[str, int, bool]) -> Encoded:
    """(bytes to store, or None; why it was skipped; (height, width); stored as is). Runs in pack's workers."""
    path, quality, png = job
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"cannot read image '{path}' ({os_reason(exc)})", (0, 0), False
    try:
        image = load_image(path, data)  # every stored image decodes, as training will decode it
    except DataError as exc:
        return None, str(exc), (0, 0), False
    size = (image.height, image.width)
    if data.startswith(_JPEG) or (png and data.startswith(b"\x89PNG")):
        return data, "", size, True
    grey = image.convert("L")
    if grey.convert("RGB").tobytes() == image.tobytes():
        image = grey  # grey stays grey: 1 channel stored, the same pixels decoded
    buffer = io.BytesIO()
    if png:
        image.save(buffer, "PNG")
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue(), "", size, False


def pack_folder(
    root: str | Path,
    out: str | Path,
    quality: int = 95,
    png: bool = False,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> PackResult:
    """Packs ``root/<identity>/<image>`` into ``out`` (a ``.rec``), its ``.idx`` and ``property``, atomically.

    An existing ``.rec``, ``.idx`` or ``property`` is refused before any work unless ``overwrite``; with it,
    the three are replaced only once the new ones are whole (a failed or killed pack keeps the old ones).
    """
    started = time.perf_counter()
    rec = Path(out)
    if rec.suffix != ".rec":
        raise OutputError(f"--out: '{rec}' does not end in .rec: name the file to write, e.g. {rec / 'train.rec'}")
    if is_record_file(root):
        raise DataError(f"--root: '{root}' is already a .rec: pack reads an identity folder")
    refuse_existing(rec, "--out", overwrite, beside=(rec.with_suffix(".idx"), rec.parent / "property"))
    with created_folders(rec.parent):  # a refused pack leaves no empty folder behind
        output_path(rec, "--out", inputs=(root,))
        identities = scan_identities(root, "--root")
        count = sum(len(paths) for _, paths in identities)
        if count >= EXACT_KEYS:
            raise DataError(
                f"--root: '{root}' holds {count} images; the insightface header stores key ranges as float32, "
                f"exact only below {EXACT_KEYS}: pack the identities in parts of fewer images"
            )
        result = _pack(root, identities, rec, (quality, png, workers, progress))
    result.bytes, result.seconds = rec.stat().st_size, time.perf_counter() - started
    return result


def _pack(root: str | Path, identities: list, rec: Path, options: tuple[int, bool, int, bool]) -> PackResult:
    """Writes the three files as temporaries, then renames them into place, one right after the other.

    ``options``: (quality, png, workers, progress).
    """
    quality, png, workers, progress = options
    jobs = [(str(path), quality, png) for _, paths in identities for path in paths]
    owners = [number for number, (_, paths) in enumerate(identities) for _ in paths]
    result = PackResult(rec)
    with ExitStack() as stack:  # renamed in reverse: the .rec, then its .idx, then property
        prop = stack.enter_context(atomic_write(rec.parent / "property", "--out"))
        idx_temp = stack.enter_context(atomic_write(rec.with_suffix(".idx"), "--out"))
        rec_temp = stack.enter_context(atomic_write(rec, "--out"))
        with open(rec_temp, "wb") as rec_stream, open(idx_temp, "w", encoding="ascii") as idx_stream:
            encoded = tqdm(_encoded(jobs, workers), total=len(jobs), desc="packing", disable=not progress)
            ranges, sizes = _write_images(RecordWriter(rec_stream, idx_stream), encoded, jobs, owners, result)
            for stream in (rec_stream, idx_stream):  # on disk now, so the three renames follow each other at once
                stream.flush()
                os.fsync(stream.fileno())
        if not ranges:
            raise DataError(f"--root: none of the {len(jobs)} images in '{root}' can be read: nothing to pack")
        height, width = sizes.most_common(1)[0][0]
        prop.write_text(f"{len(ranges)},{height},{width}\n", encoding="ascii")
        result.identities, result.image_size = len(ranges), (height, width)
    return result


def _encoded(jobs: list[tuple[str, int, bool]], workers: int) -> Iterator[Encoded]:
    if workers <= 1:
        yield from map(encode_file, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(encode_file, jobs, chunksize=32)


def _write_images(writer: RecordWriter, encoded, jobs, owners, result: PackResult) -> tuple[list, Counter]:
    """Image records from key 1, then identity records, then the header at key 0; (image ranges, sizes)."""
    ranges: list[list[int]] = []  # [first, end) image keys per packed identity
    sizes: Counter = Counter()
    key, owner = 1, -1
    for (path, _, _), number, (data, reason, size, as_is) in zip(jobs, owners, encoded, strict=True):
        if data is None:
            result.skipped.append((path, reason))
            continue
        if number != owner:
            owner = number
            ranges.append([key, key])
        writer.write(key, pack_payload(float(len(ranges) - 1), data, id=key))
        result.stored_as_is += as_is
        ranges[-1][1], key = key + 1, key + 1
        sizes[size] += 1
    result.images = key - 1
    for number, (first, end) in enumerate(ranges):
        writer.write(key + number, pack_payload([first, end], b""))
    if ranges:
        writer.write(0, pack_payload([key, key + len(ranges)], b""))
    return ranges, sizes


@dataclass
class UnpackResult:
    out: Path
    identities: int = 0
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record, reason)


def unpack_records(rec: str | Path, out: str | Path, progress: bool = True) -> UnpackResult:
    """Writes a ``.rec``'s images as ``out/<label>/<key>.<ext>``, byte for byte; ``out`` appears whole or not at all.

    Label folders and key file names are zero-padded, so that sorted by name they are in label and key
    order: packing the folder of a packed file again gives back the same bytes (JPEG records, and PNG
    with ``--png``; other formats are re-encoded). A ``.rec`` with no image facetrain reads is refused.
    """
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"--out: '{target}' already exists and is not an empty folder: choose a new folder")
    fix = "give the insightface or im2rec .rec file to unpack"
    require_records(require_file(rec, DataError, "FILE", fix, look_for=("train.rec",)), "FILE")  # before torch
    from facetrain.data.layouts import scan_records  # a .rec's layout is read with torch's process group, if any

    identities = scan_records(rec, "FILE")
    with created_folders(target.parent):  # a refused unpack leaves no empty folder behind
        if not target.exists():
            output_path(target, "--out")  # its parent exists (created if need be) and is writable; not target itself
        stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".unpacking"))
        result = UnpackResult(target)
        try:
            _unpack_all(identities, stage, result, progress)
            if not result.images:
                first = result.skipped[0][0] if result.skipped else f"'{rec}'"
                raise DataError(
                    f"FILE '{rec}': none of its {len(result.skipped)} image records holds an image facetrain reads "
                    f"(JPEG, PNG, BMP, TIFF, PGM or PPM; the first: {first}): nothing was unpacked"
                )
            stage.chmod(usual_folder_mode())  # mkdtemp made it private; the folder gets what mkdir would give
            if target.exists():
                target.rmdir()
            os.replace(stage, target)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            problem = f"cannot write '{target}' ({os_reason(exc)})"
            raise OutputError(f"--out: {problem}: choose a folder you can write to") from None
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    return result


def _unpack_all(identities: list, stage: Path, result: UnpackResult, progress: bool) -> None:
    """Each identity's images into ``stage/<label>``; a label none of whose records is an image gets no folder."""
    width = max(len(name) for name, _ in identities)
    key_width = len(str(int(identities[0][1].source.keys.max())))  # one source for every identity
    total = sum(len(images) for _, images in identities)
    with tqdm(total=total, desc="unpacking", disable=not progress) as bar:
        for name, images in identities:
            folder = stage / name.zfill(width)
            folder.mkdir()
            before = result.images
            for position in images:
                _unpack_one(images.source, position, folder, key_width, result)
                bar.update()
            if result.images == before:
                folder.rmdir()
            else:
                result.identities += 1


def _unpack_one(source, position: int, folder: Path, key_width: int, result: UnpackResult) -> None:
    image = source.payload(position).image
    extension = next((ext for magic, ext in _EXTENSIONS if image.startswith(magic)), None)
    if extension is None:
        where = source.where(position)  # "'train.rec' record key 5 at byte 1024"
        result.skipped.append((where, f"{where}: not an image format facetrain reads"))
        return
    (folder / f"{int(source.keys[position]):0{key_width}d}{extension}").write_bytes(image)
    result.images += 1
