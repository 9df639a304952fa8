"""``pack`` and ``unpack``: the insightface layout they write, what is stored as is, skipping, atomic output."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from conftest import ORL, jpeg_bytes
from PIL import Image

from facetrain.data import pack as pack_module
from facetrain.data import pack_folder, scan_identities, unpack_records
from facetrain.data.folders import make_dataset
from facetrain.data.preprocess import Preprocess
from facetrain.data.recordio import RecordFile, RecordWriter, read_index, unpack_payload
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
            pack_folder(faces, out, workers=0, progress=False, overwrite=True)
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
    assert not fresh.parent.exists() and first.images == 6  # not even the folder it created


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
    assert not (tmp_path / "b").exists()  # a refused pack leaves no empty folder behind


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


def test_pack_refuses_an_existing_rec_idx_or_property_unless_overwrite(tmp_path):
    out = tmp_path / "copy" / "train.rec"
    pack_folder(jpeg_faces(tmp_path / "faces"), out, workers=0, progress=False)
    other = jpeg_faces(tmp_path / "other", identities=2, per_identity=3)
    before = {path.name: path.read_bytes() for path in out.parent.iterdir()}
    for name in ("train.rec", "train.idx", "property"):  # each of the three is refused, even alone
        present = {path.name: path.read_bytes() for path in out.parent.iterdir()}
        with pytest.raises(OutputError, match=f"'{out.parent / name}' exists.*: give another path, or --overwrite"):
            pack_folder(other, out, workers=0, progress=False)
        assert {path.name: path.read_bytes() for path in out.parent.iterdir()} == present  # untouched
        (out.parent / name).rename(tmp_path / name)
    for name in before:
        (tmp_path / name).rename(out.parent / name)
    result = pack_folder(other, out, workers=0, progress=False, overwrite=True)
    assert (result.identities, result.images) == (2, 6)
    assert sorted(path.name for path in out.parent.iterdir()) == ["property", "train.idx", "train.rec"]  # no temps
    assert (out.parent / "property").read_text() == "2,20,20\n"
    assert [len(images) for _, images in scan_identities(out)] == [3, 3]


def test_a_refused_pack_leaves_no_empty_folder_behind(tmp_path):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken" / "p0"
    broken.mkdir(parents=True)
    (broken / "0.jpg").write_bytes(b"not an image")
    for root, match in ((tmp_path / "empty", "no identity folders"), (tmp_path / "missing", "does not exist")):
        with pytest.raises(DataError, match=match):
            pack_folder(root, tmp_path / "new" / "deep" / "train.rec", progress=False)
        assert not (tmp_path / "new").exists()
    with pytest.raises(DataError, match="none of the 1 images"):
        pack_folder(tmp_path / "broken", tmp_path / "new" / "deep" / "train.rec", workers=0, progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before is never removed
    with pytest.raises(DataError):
        pack_folder(tmp_path / "empty", tmp_path / "kept" / "train.rec", progress=False)
    assert (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_unpack_gives_its_folder_the_mode_mkdir_would(tmp_path, umask):
    rec = pack_folder(jpeg_faces(tmp_path / "faces"), tmp_path / "a" / "train.rec", workers=0, progress=False).rec
    previous = os.umask(umask)
    try:
        unpack_records(rec, tmp_path / "folders", progress=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "folders").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "folders" / "0").stat().st_mode) == 0o777 & ~umask


def test_unpack_given_a_folder_says_so_in_one_coherent_line(tmp_path):
    rec = pack_folder(jpeg_faces(tmp_path / "faces"), tmp_path / "a" / "train.rec", workers=0, progress=False).rec
    with pytest.raises(DataError, match=rf"'{rec.parent}' is a folder, not a file: did you mean '{rec}'\?$"):
        unpack_records(rec.parent, tmp_path / "out", progress=False)
    with pytest.raises(DataError) as refused:
        unpack_records(tmp_path / "faces", tmp_path / "out", progress=False)
    message = str(refused.value)
    assert message.endswith("is a folder, not a file: give the insightface or im2rec .rec file to unpack")
    assert "or to a folder" not in message and not (tmp_path / "out").exists()


def fake_rec(path, images):
    """An insightface .rec whose image records hold ``images`` (one list of payloads per identity)."""
    path.parent.mkdir(parents=True)
    jobs = [(f"{number}/{index}", 95, False) for number, payloads in enumerate(images) for index in payloads]
    owners = [number for number, payloads in enumerate(images) for _ in payloads]
    encoded = [(data, "", (20, 20), True) for payloads in images for data in payloads]
    with open(path, "wb") as rec, open(path.with_suffix(".idx"), "w", encoding="ascii") as idx:
        pack_module._write_images(RecordWriter(rec, idx), encoded, jobs, owners, pack_module.PackResult(path))
    (path.parent / "property").write_text(f"{len(images)},20,20\n")
    return path


def test_unpack_of_a_rec_without_images_is_refused_and_writes_nothing(tmp_path):
    rec = fake_rec(tmp_path / "a" / "train.rec", [[b"text", b"more"], [b"none"]])
    with pytest.raises(DataError, match=r"none of its 3 image records holds an image .*record key 1 at byte 0\)"):
        unpack_records(rec, tmp_path / "new" / "folders", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a"]  # no folder, no temporary


def test_unpack_names_each_skipped_record_by_key_and_offset(tmp_path):
    good = jpeg_bytes(1, size=20)
    rec = fake_rec(tmp_path / "a" / "train.rec", [[good, b"text"], [b"none"], [good]])
    result = unpack_records(rec, tmp_path / "folders", progress=False)
    assert (result.identities, result.images) == (2, 2)
    offsets = dict(zip(*(array.tolist() for array in read_index(rec.with_suffix(".idx"), 10**6, rec)), strict=True))
    assert [reason for _, reason in result.skipped] == [
        f"'{rec}' record key {key} at byte {offsets[key]}: not an image format facetrain reads" for key in (2, 3)
    ]
    assert sorted(path.name for path in (tmp_path / "folders").iterdir()) == ["0", "2"]  # no empty label folder
