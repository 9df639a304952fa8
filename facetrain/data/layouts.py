"""The layout of a ``.rec`` and the identities in it, told apart by the record at key 0.

- **insightface** (MS1MV2/MS1MV3, Glint360K, faces_webface...): key 0 is a header record (flag 2, no
  image) whose labels are ``[first, end)``: images are keys ``1 .. first-1``, and keys
  ``first .. end-1`` are one record per identity whose labels are the ``[first, end)`` keys of its
  images; identity ``i`` is the i-th of those records. These ranges are float32, exact only below
  2^24: with more images (Glint360K has 17.1M) the labels are read from the image records instead,
  as they are when an identity record is malformed (insightface's own reader never uses them).
- **im2rec** (mxnet's im2rec, the WebFace42M recipe): every key is an image with one label, read from
  every record's header (a scan of the headers, not of the images). A scan's labels are kept in
  ``$FACETRAIN_CACHE_DIR`` (default ``~/.cache/facetrain``) under ``record-labels/``, with the sizes,
  modification times and inodes of the ``.rec`` and ``.idx``, and used while those match.

Class names are the label numbers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facetrain import distributed
from facetrain.data.recordio import EXACT_KEYS, MISMATCHED, Payload, RecordFile, read_index, unpack_payload
from facetrain.data.records import RecordIdentity, RecordImages, RecordSource
from facetrain.data.sources import require_records
from facetrain.errors import DataError, FacetrainError
from facetrain.files import write_stream

log = logging.getLogger("facetrain")

INSIGHTFACE, IM2REC = "insightface", "im2rec"
LAYOUTS_READ = (
    "facetrain reads the insightface layout (a header record at key 0, identity range records) and im2rec "
    "files with one identity label per image"
)


def scan_records(root: str | Path, key: str = "data.root") -> list[RecordIdentity]:
    """The identities of a ``.rec`` (its ``.idx`` beside it), in label order."""
    rec = require_records(root, key)
    idx = rec.with_suffix(".idx")
    keys, offsets = read_index(idx, rec.stat().st_size, rec)
    file = RecordFile(rec)
    try:
        at_zero = np.flatnonzero(keys == 0)
        where = file.where(0, int(offsets[at_zero[0]])) if len(at_zero) else ""
        first = unpack_payload(file.read(0, int(offsets[at_zero[0]])), where) if len(at_zero) else None
        if first is not None and first.flag == 2 and not first.image:
            order = np.argsort(keys, kind="stable")  # key -> offset lookups: the insightface layout needs them
            return _insightface(rec, idx, _Lookup(keys[order], offsets[order], file), first)
        if first is not None and not first.image:
            raise DataError(
                f"{key}: {where} holds no image and is not an insightface header record "
                f"(flag {first.flag}, labels {_labels(first)}): {LAYOUTS_READ}"
            )
        return _by_label(rec, idx, IM2REC, file, keys, offsets, "no header record")
    finally:
        file.close()


class _Lookup:
    """Records by key, over the keys sorted once."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray, file: RecordFile) -> None:
        self.keys, self.offsets, self.file = keys, offsets, file

    def has(self, key: int) -> bool:
        at = int(np.searchsorted(self.keys, key))
        return at < len(self.keys) and int(self.keys[at]) == key

    def where(self, key: int) -> str:
        return self.file.where(key, self.offset(key))

    def offset(self, key: int) -> int:
        return int(self.offsets[np.searchsorted(self.keys, key)])

    def read(self, key: int) -> Payload:
        return unpack_payload(self.file.read(key, self.offset(key)), self.where(key))

    def offsets_of(self, first: int, end: int) -> np.ndarray | None:
        """Offsets of keys ``first .. end-1``, or None when the index lacks one of them."""
        at = int(np.searchsorted(self.keys, first))
        found = self.keys[at : at + end - first]
        if len(found) != end - first or (len(found) and (found[0] != first or found[-1] != end - 1)):
            return None
        return self.offsets[at : at + end - first]


def _labels(payload: Payload) -> str:
    shown = ", ".join(f"{value:g}" for value in payload.labels[:4])
    return f"[{shown}{', ...' if len(payload.labels) > 4 else ''}]"


def _insightface(rec: Path, idx: Path, lookup: _Lookup, header: Payload) -> list[RecordIdentity]:
    values = header.labels
    if not all(math.isfinite(value) and value == int(value) for value in values) or not 1 <= values[0] <= values[1]:
        raise DataError(f"{lookup.where(0)}: an insightface header record whose range {_labels(header)} is not "
                        f"[first, end) with 1 <= first <= end: {LAYOUTS_READ}")  # fmt: skip
    first, end = int(values[0]), int(values[1])
    exact = end <= EXACT_KEYS
    if not exact:
        first = _true_first(lookup, first)
    offsets = lookup.offsets_of(1, first)
    if offsets is None or (exact and lookup.offsets_of(first, end) is None):
        raise DataError(
            f"'{idx}': the header record at key 0 announces images at keys 1..{first - 1} and identity records at "
            f"keys {first}..{end - 1}, but the index lacks some of those keys: {MISMATCHED}"
        )
    image_keys = np.arange(1, first, dtype=np.int64)
    ranges = _identity_ranges(lookup, first, end) if exact else None
    if ranges is None:
        why = "identity records whose float32 ranges are inexact above 2^24 keys" if not exact else "malformed"
        log.info("%s: labels read from the %d image records (%s)", rec, first - 1, why)
        return _by_label(rec, idx, INSIGHTFACE, lookup.file, image_keys, offsets, "a header record at key 0")
    source = RecordSource(rec, idx, INSIGHTFACE, image_keys, offsets)
    source.detail = (
        f"insightface layout: a header record at key 0, {first - 1} image records, {end - first} identity records"
    )
    return [(str(number), RecordImages(source, start - 1, stop - 1)) for number, (start, stop) in enumerate(ranges)]


def _true_first(lookup: _Lookup, rounded: int) -> int:
    """The first identity record's key when the header's float32 ``first`` was rounded (above 2^24)."""
    spacing = max(1, int(np.spacing(np.float32(rounded))))
    for key in range(max(2, rounded - spacing), rounded + spacing + 1):
        if lookup.has(key) and lookup.has(key - 1):
            record, before = lookup.read(key), lookup.read(key - 1)
            if record.flag >= 2 and not record.image and before.image:
                return key
    raise DataError(
        f"{lookup.where(0)}: no identity record follows the images near key {rounded}, where the header puts the "
        f"first: {LAYOUTS_READ}"
    )


def _identity_ranges(lookup: _Lookup, first: int, end: int) -> list[tuple[int, int]] | None:
    """Each identity record's ``[first, end)`` image keys, or None when one is not an identity record."""
    ranges = []
    for key in tqdm(range(first, end), desc="reading identity records", leave=False,
                    disable=not distributed.is_main() or end - first < 100_000):  # fmt: skip
        record = lookup.read(key)
        values = record.labels[:2]
        usable = record.flag >= 2 and not record.image and all(math.isfinite(value) for value in values)
        if not usable or not 1 <= values[0] <= values[1] <= first:
            log.info("%s: not an identity record (flag %d, labels %s)", lookup.where(key), record.flag, _labels(record))
            return None
        ranges.append((int(values[0]), int(values[1])))
    return ranges


def _by_label(
    rec: Path, idx: Path, layout: str, file: RecordFile, keys: np.ndarray, offsets: np.ndarray, what: str
) -> list[RecordIdentity]:
    """Identities from every image record's own label: a scan of the records' headers (cached)."""
    cache = _label_cache(rec, idx)
    labels = _cached_labels(cache, keys, offsets)
    if labels is None:
        labels = _scan_labels(file, keys, offsets)
        if distributed.is_main():  # one writer: the other ranks read it on the next start
            _save_labels(cache, keys, offsets, labels)
    order = np.argsort(labels, kind="stable")
    source = RecordSource(rec, idx, layout, keys[order], offsets[order])
    found, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    source.detail = f"{layout} layout: {what}, {len(keys)} image records with one label each"
    return [
        (str(int(label)), RecordImages(source, int(start), int(start + count)))
        for label, start, count in zip(found, starts, counts, strict=True)
    ]


def _scan_labels(file: RecordFile, keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    labels = np.empty(len(keys), dtype=np.int64)
    for position in tqdm(range(len(keys)), desc="reading record labels", leave=False,
                         disable=not distributed.is_main() or len(keys) < 100_000):  # fmt: skip
        key, offset = int(keys[position]), int(offsets[position])
        head = file.read_head(key, offset)
        flag = int.from_bytes(head[:4], "little") if len(head) >= 4 else 0
        if len(head) < 24 + 4 * flag:  # more labels than the first read holds
            head = file.read(key, offset)
        labels[position] = _identity_label(unpack_payload(head, file.where(key, offset)), file.where(key, offset))
    return labels


def _label_cache(rec: Path, idx: Path) -> tuple[Path, np.ndarray]:
    """Where a scan's labels are kept, and the stamp (sizes, modification times) that says they are current."""
    stats = [rec.stat(), idx.stat()]
    stamp = np.array([value for st in stats for value in (st.st_size, st.st_mtime_ns, st.st_ino)], dtype=np.int64)
    name = hashlib.sha256(str(rec.resolve()).encode()).hexdigest()[:20]
    root = Path(os.environ.get("FACETRAIN_CACHE_DIR") or Path.home() / ".cache" / "facetrain")
    return root / "record-labels" / f"{name}.npz", stamp


def _cached_labels(cache: tuple[Path, np.ndarray], keys: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    path, stamp = cache
    try:
        with np.load(path, allow_pickle=False) as saved:
            current = np.array_equal(saved["stamp"], stamp) and np.array_equal(saved["keys"], keys)
            if current and np.array_equal(saved["offsets"], offsets):
                return saved["labels"]
    except (OSError, ValueError, KeyError, EOFError):
        pass  # none yet, or unreadable: scan again
    return None


def _save_labels(cache: tuple[Path, np.ndarray], keys: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> None:
    path, stamp = cache
    arrays = {"stamp": stamp, "keys": keys, "offsets": offsets, "labels": labels}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_stream(path, lambda stream: np.savez(stream, **arrays), "label cache")
    except (OSError, FacetrainError) as exc:  # a read-only home: the next start scans again
        log.debug("labels not cached in %s: %s", path, exc)


def _identity_label(record: Payload, where: str) -> int:
    if record.flag > 1:
        raise DataError(
            f"{where}: its label is {record.flag} numbers {_labels(record)}, not one identity: labels of that shape "
            f"are detection boxes or multi-part labels; {LAYOUTS_READ}"
        )
    value = record.labels[0]
    if not (math.isfinite(value) and 0 <= value < EXACT_KEYS and value == int(value)):
        raise DataError(
            f"{where}: its label {value:g} is not an identity number (a whole number from 0 to {EXACT_KEYS - 1}): "
            f"{LAYOUTS_READ}"
        )
    return int(value)
