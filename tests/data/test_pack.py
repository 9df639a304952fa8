"""``pack`` and ``unpack``: the insightface layout they write, what is stored as is, skipping, atomic output."""

from __future__ import annotations

import pytest
import torch
from conftest import ORL, jpeg_bytes
from PIL import Image

from facetrain.data import pack as pack_module
from facetrain.data import pack_folder, scan_identities, unpack_records
from facetrain.data.folders import make_dataset
from facetrain.data.preprocess import Preprocess
from facetrain.data.recordio import RecordFile, read_index, unpack_payload
from facetrain.errors import DataError, OutputError


def records(rec):
    """{key: payload} of a .rec, and its keys in .idx order."""
    keys, offsets = read_index(rec.with_suffix(".idx"), rec.stat().st_size, rec)
    file = RecordFile(rec)
    pairs = zip(keys.tolist(), offsets.tolist(), strict=True)
    found = {key: unpack_payload(file.read(key, offset), "") for key, offset in pairs}
    return found, keys.tolist()


def jpeg_faces(root, identities=3, per_identity=2):
    for identity in range(identities):
        (root / f"p{identity}").mkdir(parents=True)
        for index in range(per_identity):
            (root / f"p{identity}" / f"{index}.jpg").write_bytes(jpeg_bytes(10 * identity + index, size=20))
    return root


def test_pack_writes_the_insightface_layout_with_the_header_last(tmp_path):
    faces = jpeg_faces(tmp_path / "faces")
    result = pack_folder(faces, tmp_path / "out" / "train.rec", workers=2, progress=False)
    assert (result.identities, result.images, result.stored_as_is, result.image_size) == (3, 6, 6, (20, 20))
    found, order = records(result.rec)
    assert order == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # images, identity records, then the header at key 0
    assert (found[0].flag, found[0].labels, found[0].image) == (2, (7.0, 10.0), b"")
    assert [found[key].labels for key in (7, 8, 9)] == [(1.0, 3.0), (3.0, 5.0), (5.0, 7.0)]
    for key in range(1, 7):
        identity, index = divmod(key - 1, 2)
        assert found[key].flag == 0 and found[key].labels == (float(identity),) and found[key].id == key
        assert found[key].image == (faces / f"p{identity}" / f"{index}.jpg").read_bytes()  # JPEG stored byte for byte
    assert (tmp_path / "out" / "property").read_text() == "3,20,20\n"


def smooth_faces(root, identities=2, per_identity=2):
    """PNGs of smooth colour ramps (JPEG's kind of picture: random noise would not survive quality 90)."""
    rows, columns = torch.meshgrid(torch.linspace(0, 1, 20), torch.linspace(0, 1, 24), indexing="ij")
    for identity in range(identities):
        (root / f"p{identity}").mkdir(parents=True)
        for index in range(per_identity):
            pixels = torch.stack([rows, columns, (rows + columns + 0.2 * (identity + index)) % 1]) * 255
            Image.fromarray(pixels.byte().permute(1, 2, 0).numpy()).save(root / f"p{identity}" / f"{index}.png")
    return root


def test_other_formats_are_reencoded_as_jpeg_or_losslessly_as_png(tmp_path):
    faces = smooth_faces(tmp_path / "faces")
    lossy = pack_folder(faces, tmp_path / "jpeg" / "train.rec", quality=90, workers=0, progress=False)
    lossless = pack_folder(faces, tmp_path / "png" / "train.rec", png=True, workers=0, progress=False)
    assert lossy.stored_as_is == 0 and lossless.stored_as_is == 4 and lossy.image_size == (20, 24)
    assert records(lossy.rec)[0][1].image.startswith(b"\xff\xd8\xff")
    folder = make_dataset(scan_identities(faces), Preprocess(32))
    exact = make_dataset(scan_identities(lossless.rec), Preprocess(32))
    close = make_dataset(scan_identities(lossy.rec), Preprocess(32))
    for index in range(4):
        assert torch.equal(exact[index][0], folder[index][0])
        assert 0 < (close[index][0] - folder[index][0]).abs().mean() < 0.05


def test_grey_images_stay_one_channel_and_decode_to_the_same_pixels(tmp_path):
    faces = tmp_path / "faces"
    for name in ("s1", "s2"):
        (faces / name).mkdir(parents=True)
        for file in ("1.pgm", "2.pgm"):
            (faces / name / file).write_bytes((ORL / name / file).read_bytes())
    rec = pack_folder(faces, tmp_path / "o" / "train.rec", png=True, workers=0, progress=False).rec
    image = records(rec)[0][1].image
    assert image[25] == 0  # PNG colour type 0: grey
    folder, packed = (make_dataset(scan_identities(root), Preprocess(40)) for root in (faces, rec))
    assert all(torch.equal(folder[i][0], packed[i][0]) for i in range(4))


def test_bad_images_are_skipped_and_listed_and_labels_stay_contiguous(tmp_path):
    faces = jpeg_faces(tmp_path / "faces")
    for index in (0, 1):
        (faces / "p1" / f"{index}.jpg").write_bytes(b"not an image")  # p1 has no good image left
    result = pack_folder(faces, tmp_path / "out" / "train.rec", workers=0, progress=False)
    assert (result.identities, result.images, len(result.skipped)) == (2, 4, 2)
    assert "p1/0.jpg" in result.skipped[0][0] and "cannot read image" in result.skipped[0][1]
    assert [(name, len(images)) for name, images in scan_identities(result.rec)] == [("0", 2), ("1", 2)]


def test_an_interrupted_pack_leaves_no_file_and_keeps_the_previous_one(tmp_path):
    faces = jpeg_faces(tmp_path / "faces")
    out = tmp_path / "out" / "train.rec"
    first = pack_folder(faces, out, workers=0, progress=False)
    before = {path.name: path.read_bytes() for path in out.parent.iterdir()}
    calls = []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return encode(job)

    encode = pack_module.encode_file
    pack_module.encode_file = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            pack_folder(faces, out, workers=0, progress=False)
    finally:
        pack_module.encode_file = encode
    assert {path.name: path.read_bytes() for path in out.parent.iterdir()} == before  # no temp files either
    fresh = tmp_path / "fresh" / "train.rec"
    pack_module.encode_file = interrupted
    calls.clear()
    try:
        with pytest.raises(KeyboardInterrupt):
            pack_folder(faces, fresh, workers=0, progress=False)
    finally:
        pack_module.encode_file = encode
    assert list(fresh.parent.iterdir()) == [] and first.images == 6


def test_pack_refuses_wrong_inputs_and_outputs(tmp_path):
    faces = jpeg_faces(tmp_path / "faces")
    with pytest.raises(OutputError, match="does not end in .rec: name the file to write"):
        pack_folder(faces, tmp_path / "out", progress=False)
    rec = pack_folder(faces, tmp_path / "a" / "train.rec", workers=0, progress=False).rec
    with pytest.raises(DataError, match="is already a .rec: pack reads an identity folder"):
        pack_folder(rec, tmp_path / "b" / "train.rec", progress=False)
    with pytest.raises(DataError, match="--root: folder .* does not exist"):
        pack_folder(tmp_path / "missing", tmp_path / "b" / "train.rec", progress=False)
    pack_module.EXACT_KEYS = 6  # as if the folder held 2^24 images
    try:
        with pytest.raises(DataError, match="holds 6 images; the insightface header stores key ranges as float32"):
            pack_folder(faces, tmp_path / "b" / "train.rec", progress=False)
    finally:
        pack_module.EXACT_KEYS = 1 << 24
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_unpack_then_pack_gives_back_the_same_bytes(tmp_path):
    faces = jpeg_faces(tmp_path / "faces", identities=11, per_identity=1)  # two-digit labels: padding matters
    rec = pack_folder(faces, tmp_path / "a" / "train.rec", workers=0, progress=False).rec
    result = unpack_records(rec, tmp_path / "folders", progress=False)
    assert (result.identities, result.images, result.skipped) == (11, 11, [])
    assert sorted(path.name for path in (tmp_path / "folders").iterdir())[:3] == ["00", "01", "02"]
    # pack numbered the folders in name order (p0, p1, p10, p2, ... p9): label 10, key 11 is p9
    assert (tmp_path / "folders" / "10" / "11.jpg").read_bytes() == (faces / "p9" / "0.jpg").read_bytes()
    again = pack_folder(tmp_path / "folders", tmp_path / "b" / "train.rec", workers=0, progress=False).rec
    assert again.read_bytes() == rec.read_bytes()
    assert again.with_suffix(".idx").read_bytes() == rec.with_suffix(".idx").read_bytes()


def test_unpack_refuses_a_used_folder_and_leaves_nothing_when_it_fails(tmp_path):
    rec = pack_folder(jpeg_faces(tmp_path / "faces"), tmp_path / "a" / "train.rec", workers=0, progress=False).rec
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(OutputError, match="already exists and is not an empty folder"):
        unpack_records(rec, tmp_path / "used", progress=False)
    keys, offsets = read_index(rec.with_suffix(".idx"), rec.stat().st_size, rec)
    data = bytearray(rec.read_bytes())
    at = int(offsets[keys.tolist().index(5)])
    data[at : at + 8] = bytes(8)  # image key 5 no longer starts with the magic word: the run stops there
    rec.write_bytes(bytes(data))
    with pytest.raises(DataError, match="record key 5 at byte"):
        unpack_records(rec, tmp_path / "new", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "faces", "used"]
