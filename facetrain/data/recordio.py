"""MXNet RecordIO without mxnet: the container of insightface's ``train.rec`` and im2rec's ``.rec`` files.

The format, as dmlc-core's ``recordio.h`` and mxnet's ``recordio.py`` describe it:

- A record is stored as one or more chunks. A chunk is the little-endian ``uint32`` magic
  ``0xced7230a``, a ``uint32`` holding ``cflag << 29 | length``, then ``length`` bytes of data,
  zero-padded to a multiple of 4.
- The writer splits a record wherever the magic word sits at a 4-byte-aligned position of its data,
  dropping those 4 bytes: cflag 0 is a whole record, 1, 2 and 3 the first, a middle and the last
  part. A reader joins the parts with the magic word between them.
- The ``.idx`` beside the ``.rec`` is text, one ``key<TAB>byte offset`` line per record.
- A record's data (mxnet's ``recordio.pack``) starts with a 24-byte header ``<IfQQ``: flag, label,
  id, id2. When flag > 0 the header's label is unused and ``flag`` float32 labels follow it. The
  encoded image comes last.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrain.errors import DataError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
EXACT_KEYS = 1 << 24  # float32 holds every whole number below this exactly
_CHUNK = struct.Struct("<II")  # magic, cflag << 29 | length
_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
_LENGTH_MASK = (1 << 29) - 1
_FIRST_READ = 48  # chunk header + record header + 4 labels: enough for a record's labels in one read
REDOWNLOAD = "the file is damaged or cut short (an incomplete download or copy): download or copy it again"
MISMATCHED = (
    "the .idx does not belong to this .rec, or the .rec is damaged there: use the .idx written with this .rec, "
    "or copy both again"
)


@dataclass(frozen=True)
class Payload:
    """A record's data: header fields, its labels (one, or ``flag`` of them), and the encoded image."""

    flag: int
    labels: tuple[float, ...]
    id: int
    id2: int
    image: bytes


def pack_payload(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """A record's data, as mxnet's ``recordio.pack`` lays it out: a scalar label sits in the header."""
    if isinstance(label, (int, float)):
        return _HEADER.pack(0, float(label), id, id2) + image
    values = [float(value) for value in label]
    return _HEADER.pack(len(values), 0.0, id, id2) + struct.pack(f"<{len(values)}f", *values) + image


def unpack_payload(data: bytes, where: str) -> Payload:
    """``where`` names the record in errors: "'train.rec' record key 5 at byte 1024"."""
    if len(data) < _HEADER.size:
        raise DataError(f"{where}: {len(data)} bytes, shorter than the 24-byte record header: {REDOWNLOAD}")
    flag, label, id_, id2 = _HEADER.unpack_from(data)
    if flag == 0:
        return Payload(0, (label,), id_, id2, data[_HEADER.size :])
    end = _HEADER.size + 4 * flag
    if end > len(data):
        raise DataError(f"{where}: its header announces {flag} labels but the record ends first: {REDOWNLOAD}")
    labels = struct.unpack_from(f"<{flag}f", data, _HEADER.size)
    return Payload(flag, labels, id_, id2, data[end:])


def encode_record(payload: bytes) -> bytes:
    """The chunks that store ``payload``, split where the magic word sits at an aligned position."""
    if len(payload) > _LENGTH_MASK:
        raise ValueError(f"a record holds at most {_LENGTH_MASK} bytes, got {len(payload)}")
    parts, start = [], 0
    found = payload.find(MAGIC_BYTES)
    while found != -1:
        if found % 4 == 0:
            parts.append(payload[start:found])
            start = found + 4
            found = payload.find(MAGIC_BYTES, start)
        else:
            found = payload.find(MAGIC_BYTES, found + 1)
    parts.append(payload[start:])
    flags = [0] if len(parts) == 1 else [1] + [2] * (len(parts) - 2) + [3]
    out = bytearray()
    for flag, part in zip(flags, parts, strict=True):
        out += _CHUNK.pack(MAGIC, flag << 29 | len(part)) + part + bytes(-len(part) % 4)
    return bytes(out)


class RecordFile:
    """Random access to a ``.rec`` by byte offset.

    The file is opened lazily by each process that reads (DataLoader workers open their own after the
    fork), and reads use ``pread``, so no file position is ever shared.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}  # a pickled copy (spawned workers) opens its own

    def _handle(self) -> int:
        if self._pid != os.getpid() or self._fd is None:
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def where(self, key: int, offset: int) -> str:
        return f"'{self.path}' record key {key} at byte {offset}"

    def read(self, key: int, offset: int) -> bytes:
        """The whole record at ``offset`` (its parts joined), checked chunk by chunk."""
        return self._read(key, offset, None)

    def read_head(self, key: int, offset: int) -> bytes:
        """At least the record's header and labels (read in one go when the record is not split)."""
        return self._read(key, offset, _FIRST_READ)

    def _read(self, key: int, offset: int, first_read: int | None) -> bytes:
        fd, position, parts = self._handle(), offset, []
        while True:
            block = os.pread(fd, first_read or _CHUNK.size, position)
            if len(block) < _CHUNK.size:
                raise DataError(f"{self.where(key, offset)}: the file ends inside the record: {REDOWNLOAD}")
            magic, packed = _CHUNK.unpack_from(block)
            if magic != MAGIC:
                what = "the record does not start" if not parts else "a part of the record does not start"
                raise DataError(f"{self.where(key, offset)}: {what} with the RecordIO magic word: {MISMATCHED}")
            flag, length = packed >> 29, packed & _LENGTH_MASK
            if flag > 3 or (flag in (0, 1)) != (not parts):
                raise DataError(f"{self.where(key, offset)}: its parts are out of order (flag {flag}): {REDOWNLOAD}")
            if first_read and flag == 0:  # the record's start is here: all a caller of read_head needs
                if len(block) < _CHUNK.size + min(length, first_read - _CHUNK.size):
                    raise DataError(f"{self.where(key, offset)}: the file ends inside the record: {REDOWNLOAD}")
                return block[_CHUNK.size : _CHUNK.size + length]
            data = os.pread(fd, length, position + _CHUNK.size)
            if len(data) < length:
                raise DataError(f"{self.where(key, offset)}: the file ends inside the record: {REDOWNLOAD}")
            parts.append(data)
            position += _CHUNK.size + length + (-length % 4)
            if flag in (0, 3):
                return MAGIC_BYTES.join(parts)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def read_index(idx: Path, rec_size: int, rec: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, byte offsets) of a ``.idx``, in file order; every line and offset checked."""
    text = idx.read_bytes()
    try:
        numbers = np.fromstring(text, dtype=np.int64, sep=" ")  # text mode is not deprecated
    except ValueError:
        numbers = None
    lines = text.count(b"\n") + (not text.endswith(b"\n") and bool(text))
    if numbers is None or len(numbers) != 2 * lines or b"-" in text or b"+" in text:
        numbers = _parse_lines(idx, text)  # slow, but names the first bad line (and allows blank ones)
    keys, offsets = numbers[0::2], numbers[1::2]
    if len(keys) == 0:
        raise DataError(f"'{idx}' lists no records: {MISMATCHED}")
    unique, counts = np.unique(keys, return_counts=True)
    if len(unique) != len(keys):
        raise DataError(f"'{idx}' lists key {int(unique[counts > 1][0])} more than once: {MISMATCHED}")
    beyond = np.flatnonzero((offsets < 0) | (offsets + _CHUNK.size > rec_size))
    if len(beyond):
        first = int(beyond[0])
        raise DataError(
            f"'{idx}' line {first + 1}: key {int(keys[first])} at byte {int(offsets[first])} lies beyond the end of "
            f"'{rec}' ({rec_size} bytes): {MISMATCHED}, or copy '{rec.name}' again if it was cut short"
        )
    return keys, offsets


def _parse_lines(idx: Path, text: bytes) -> np.ndarray:
    numbers: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(field.isdigit() for field in fields):
            text = line[:40].decode("utf-8", "backslashreplace")  # a binary file's bytes, escaped
            shown = "".join(char if char.isprintable() or char == "\t" else ascii(char)[1:-1] for char in text)
            raise DataError(f"'{idx}' line {number}: expected 'key<TAB>byte offset', got '{shown}': {MISMATCHED}")
        numbers += (int(fields[0]), int(fields[1]))
    return np.array(numbers, dtype=np.int64)


class RecordWriter:
    """Appends records to an open ``.rec`` stream and their ``key<TAB>offset`` lines to an ``.idx`` stream."""

    def __init__(self, rec, idx) -> None:  # binary and text streams
        self.rec, self.idx, self.offset = rec, idx, 0

    def write(self, key: int, payload: bytes) -> None:
        chunk = encode_record(payload)
        self.rec.write(chunk)
        self.idx.write(f"{key}\t{self.offset}\n")
        self.offset += len(chunk)
