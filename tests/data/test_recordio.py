"""The RecordIO container: chunks split at the magic word, record headers, the .idx, and damaged files.

The ``mx_*`` fixtures were written by mxnet 1.9.1 itself (``fixtures/make_mxnet_fixtures.py``).
"""

from __future__ import annotations

import io
import pickle
import random
import re
import struct
from pathlib import Path

import pytest
from conftest import write_records

from facetrain.data.recordio import (
    MAGIC,
    MAGIC_BYTES,
    RecordFile,
    RecordWriter,
    encode_record,
    pack_payload,
    read_index,
    unpack_payload,
)
from facetrain.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def chunk_flags(data: bytes) -> list[int]:
    """The cflag of every chunk of a .rec, walked from the start by hand."""
    flags, at = [], 0
    while at < len(data):
        magic, packed = struct.unpack_from("<II", data, at)
        assert magic == MAGIC
        length = packed & ((1 << 29) - 1)
        flags.append(packed >> 29)
        at += 8 + length + (-length % 4)
    return flags


def read_back(payload: bytes, folder: Path) -> bytes:
    path = folder / "one.rec"
    path.write_bytes(encode_record(payload))
    return RecordFile(path).read(0, 0)


def test_a_record_is_split_only_where_the_magic_word_is_aligned_and_read_back_whole(tmp_path):
    aligned = b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"ij"
    assert chunk_flags(encode_record(aligned)) == [1, 2, 3]
    assert len(encode_record(aligned)) == 3 * 8 + 4 + 4 + 4  # the magic words are dropped, "ij" padded to 4
    assert read_back(aligned, tmp_path) == aligned
    unaligned = b"ab" + MAGIC_BYTES + b"cd"
    assert chunk_flags(encode_record(unaligned)) == [0] and read_back(unaligned, tmp_path) == unaligned
    for edge in (MAGIC_BYTES, MAGIC_BYTES + b"xyz", b"wxyz" + MAGIC_BYTES, MAGIC_BYTES * 3, b""):
        assert read_back(edge, tmp_path) == edge


def test_random_records_with_magic_words_anywhere_read_back_unchanged(tmp_path):
    rng = random.Random(0)
    for _ in range(200):
        pieces = [bytes(rng.randrange(256) for _ in range(rng.randrange(9))) for _ in range(rng.randrange(1, 6))]
        payload = MAGIC_BYTES.join(pieces)
        assert read_back(payload, tmp_path) == payload


def test_payload_header_scalar_and_array_labels_as_mxnet_packs_them():
    scalar = pack_payload(7, b"IMG", id=3, id2=4)
    assert scalar[:24] == struct.pack("<IfQQ", 0, 7.0, 3, 4)
    parsed = unpack_payload(scalar, "r")
    assert (parsed.flag, parsed.labels, parsed.id, parsed.id2, parsed.image) == (0, (7.0,), 3, 4, b"IMG")
    array = unpack_payload(pack_payload([401, 441], b""), "r")
    assert (array.flag, array.labels, array.image) == (2, (401.0, 441.0), b"")
    with pytest.raises(DataError, match="'x.rec' record key 5 at byte 9: 10 bytes, shorter than the 24-byte"):
        unpack_payload(b"0123456789", "'x.rec' record key 5 at byte 9")
    with pytest.raises(DataError, match="announces 9 labels but the record ends first"):
        unpack_payload(struct.pack("<IfQQ", 9, 0.0, 0, 0) + b"1234", "r")


@pytest.mark.parametrize("name", ["mx_insightface", "mx_im2rec", "mx_boxes"])
def test_our_writer_gives_back_mxnets_bytes_exactly(name):
    rec = FIXTURES / f"{name}.rec"
    keys, offsets = read_index(rec.with_suffix(".idx"), rec.stat().st_size, rec)
    file = RecordFile(rec)
    stream, index = io.BytesIO(), io.StringIO()
    writer = RecordWriter(stream, index)
    for key, offset in zip(keys.tolist(), offsets.tolist(), strict=True):
        writer.write(key, file.read(key, offset))
    assert stream.getvalue() == rec.read_bytes()
    assert index.getvalue() == rec.with_suffix(".idx").read_text()


def test_the_mxnet_fixtures_hold_split_records_and_our_reader_puts_the_magic_back():
    for name, split_keys in (("mx_insightface", (2, 8)), ("mx_im2rec", (3, 4))):
        rec = FIXTURES / f"{name}.rec"
        assert chunk_flags(rec.read_bytes()).count(2) == 2  # two records of 3 parts each
        keys, offsets = read_index(rec.with_suffix(".idx"), rec.stat().st_size, rec)
        file = RecordFile(rec)
        for key in split_keys:
            data = file.read(key, int(offsets[keys.tolist().index(key)]))
            aligned = [at for at in range(0, len(data), 4) if data[at : at + 4] == MAGIC_BYTES]
            assert len(aligned) == 2, name


def test_index_errors_name_the_file_and_line(tmp_path):
    rec = write_records(tmp_path / "a.rec", [(0, pack_payload(1, b"x")), (1, pack_payload(2, b"y"))])
    idx, size = rec.with_suffix(".idx"), rec.stat().st_size
    keys, offsets = read_index(idx, size, rec)
    assert keys.tolist() == [0, 1] and offsets.tolist() == [0, 36]
    idx.write_text("0\t0\n\n1\t36\n")  # blank lines are tolerated
    assert read_index(idx, size, rec)[0].tolist() == [0, 1]
    for text, expected in (
        ("0\t0\n1 36 7\n", "line 2: expected 'key<TAB>byte offset', got '1 36 7'"),
        ("0\t0\nkey\t36\n", "line 2: expected 'key<TAB>byte offset'"),
        ("0\t0\n0\t36\n", "lists key 0 more than once"),
        ("0\t0\n-1\t36\n", "line 2: expected 'key<TAB>byte offset', got '-1\t36'"),
        (b"0\t0\n\x93\xff\x00z\n", "line 2: expected 'key<TAB>byte offset', got '\\x93\\xff\\x00z'"),
        ("0\t0\n1\t9999\n", f"line 2: key 1 at byte 9999 lies beyond the end of '{rec}' ({size} bytes)"),
        ("", "lists no records"),
    ):
        idx.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(DataError, match=re.escape(expected)) as caught:
            read_index(idx, size, rec)
        assert str(idx) in str(caught.value) and "the .idx does not belong to this .rec" in str(caught.value)


def test_a_damaged_rec_is_one_error_naming_key_and_byte_offset(tmp_path):
    payload = pack_payload(1, b"0123456789" * 10)
    rec = write_records(tmp_path / "a.rec", [(0, payload), (1, payload)])
    file = RecordFile(rec)
    with pytest.raises(DataError, match=r"'.*a.rec' record key 1 at byte 12: the record does not start with the Reco"):
        file.read(1, 12)  # an offset inside the first record: the .idx does not match
    rec.write_bytes(rec.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"record key 1 at byte 132: the file ends inside the record: the file is dam"):
        RecordFile(rec).read(1, 132)
    parts = encode_record(b"wxyz" + MAGIC_BYTES + b"abcd")
    rec.write_bytes(parts[:12] + struct.pack("<II", MAGIC, 0 << 29 | 4) + parts[20:])  # part 2 flagged whole
    with pytest.raises(DataError, match="its parts are out of order"):
        RecordFile(rec).read(0, 0)
    rec.write_bytes(parts[:12] + struct.pack("<II", MAGIC, 5 << 29 | 4) + parts[20:])  # no such flag
    with pytest.raises(DataError, match=r"its parts are out of order \(flag 5\)"):
        RecordFile(rec).read(0, 0)


def test_a_record_file_is_opened_lazily_and_never_shared_through_pickling(tmp_path):
    rec = write_records(tmp_path / "a.rec", [(0, pack_payload(1, b"x"))])
    file = RecordFile(rec)
    assert file._fd is None  # nothing is opened before the first read (DataLoader workers open their own)
    file.read(0, 0)
    assert file._fd is not None
    copy = pickle.loads(pickle.dumps(file))
    assert copy._fd is None and copy.read(0, 0) == pack_payload(1, b"x")
