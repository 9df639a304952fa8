"""``.rec`` datasets: both layouts (mxnet-written and our own), every refusal, bad images, and rank slices."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conftest import jpeg_bytes, make_faces, tiny_config, write_records

from facetrain.data import EpochSampler, build_datasets, layouts, scan_identities, split_identities, train_loader
from facetrain.data.folders import make_dataset
from facetrain.data.preprocess import Preprocess, load_image
from facetrain.data.recordio import MAGIC_BYTES, encode_record, pack_payload
from facetrain.data.records import RecordDataset
from facetrain.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def insightface_records(images_per_identity: list[int], header_first: bool = True, split: bool = False) -> list:
    """(key, payload) of an insightface-layout file; with ``split`` every image holds two aligned magic words."""
    images, ranges, key = [], [], 1
    comment = b"xx" + MAGIC_BYTES + b"abcd" + MAGIC_BYTES if split else b""  # text at record byte 30: 32 is aligned
    for label, count in enumerate(images_per_identity):
        ranges.append((key, key + count))
        for _ in range(count):
            images.append((key, pack_payload(label, jpeg_bytes(key, comment=comment), id=key)))
            key += 1
    identities = [(key + i, pack_payload([first, end], b"")) for i, (first, end) in enumerate(ranges)]
    header = (0, pack_payload([key, key + len(ranges)], b""))
    return [header, *images, *identities] if header_first else [*images, *identities, header]


def identities_of(rec: Path) -> list[tuple[str, int]]:
    return [(name, len(images)) for name, images in scan_identities(rec)]


def test_mxnet_written_insightface_file_reads_with_its_split_records():
    identities = scan_identities(FIXTURES / "mx_insightface.rec")
    assert [(name, len(images)) for name, images in identities] == [("0", 3), ("1", 3), ("2", 3)]
    assert identities[0][1].source.layout == "insightface"
    dataset = make_dataset(identities, Preprocess(16))
    assert [dataset[i][1] for i in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert dataset.bad_records == 0  # every image decoded, the split ones (keys 2 and 8) included
    assert dataset.name(1) == "mx_insightface.rec:2"


def test_mxnet_written_im2rec_file_groups_images_by_label():
    identities = scan_identities(FIXTURES / "mx_im2rec.rec")
    source = identities[0][1].source
    assert source.layout == "im2rec" and [(name, len(images)) for name, images in identities] == [
        ("0", 3), ("1", 3), ("2", 3)
    ]  # fmt: skip
    # labels 2,0,1,2,0,1,1,0,2 at keys 0..8 (key 4's label is a 1-element array, as --pack-label writes)
    assert [int(source.keys[p]) for _, images in identities for p in images] == [1, 4, 7, 2, 5, 6, 0, 3, 8]
    dataset = make_dataset(identities, Preprocess(16))
    assert all(dataset[i][0].shape == (3, 16, 16) for i in range(9)) and dataset.bad_records == 0


def test_labels_that_are_boxes_are_refused_saying_what_was_found():
    with pytest.raises(DataError) as caught:
        scan_identities(FIXTURES / "mx_boxes.rec")
    message = str(caught.value)
    assert "mx_boxes.rec' record key 0 at byte 0: its label is 6 numbers [2, 5, 0, 0.1, ...]" in message
    assert "detection boxes" in message and "insightface layout" in message


@pytest.mark.parametrize("header_first", [True, False])
def test_our_insightface_files_with_split_records_in_either_order(tmp_path, header_first):
    records = insightface_records([3, 1, 2], header_first, split=True)
    image_record = records[1] if header_first else records[0]
    assert encode_record(image_record[1]).count(MAGIC_BYTES) == 3  # 3 chunk headers: the record is split in 3
    rec = write_records(tmp_path / "t.rec", records)
    assert identities_of(rec) == [("0", 3), ("1", 1), ("2", 2)]
    dataset = make_dataset(scan_identities(rec), Preprocess(16))
    expected = [load_image("x", jpeg_bytes(key, comment=b"xx" + MAGIC_BYTES + b"abcd" + MAGIC_BYTES))
                for key in range(1, 7)]  # fmt: skip
    for index in range(6):
        assert torch.equal(dataset[index][0], Preprocess(16)(expected[index]))


def test_im2rec_labels_need_not_be_contiguous_and_name_the_classes(tmp_path):
    rec = write_records(tmp_path / "t.rec", [(key, pack_payload(label, jpeg_bytes(key))) for key, label in
                                              enumerate([7, 3, 7, 3, 3])])  # fmt: skip
    assert identities_of(rec) == [("3", 3), ("7", 2)]
    assert make_dataset(scan_identities(rec), Preprocess(16)).labels == [0, 0, 0, 1, 1]


def bad(tmp_path: Path, records: list, idx: str | None = None) -> str:
    rec = write_records(tmp_path / "t.rec", records)
    if idx is not None:
        rec.with_suffix(".idx").write_text(idx)
    with pytest.raises(DataError) as caught:
        scan_identities(rec)
    return str(caught.value)


def test_refusals_say_what_was_found_and_where(tmp_path):
    image = jpeg_bytes(0)
    message = bad(tmp_path, [(0, pack_payload(1, b"")), (1, pack_payload(1, image))])
    assert "record key 0 at byte 0 holds no image and is not an insightface header record (flag 0" in message
    message = bad(tmp_path, [(0, pack_payload([5, 2], b"")), (1, pack_payload(0, image))])
    assert "an insightface header record whose range [5, 2] is not [first, end)" in message
    message = bad(
        tmp_path, [(0, pack_payload([2, 4], b"")), (1, pack_payload(0, image)), (2, pack_payload([1, 2], b""))]
    )
    assert "announces images at keys 1..1 and identity records at keys 2..3, but the index lacks" in message
    message = bad(tmp_path, [(0, pack_payload([float("nan"), 2], b"")), (1, pack_payload(0, image))])
    assert "an insightface header record whose range [nan, 2] is not [first, end)" in message
    message = bad(tmp_path, [(0, pack_payload(2.5, image))])
    assert "its label 2.5 is not an identity number" in message
    message = bad(tmp_path, [(0, pack_payload(-1, image))])
    assert "its label -1 is not an identity number" in message
    message = bad(tmp_path, [(0, pack_payload(float("inf"), image))])
    assert "its label inf is not an identity number" in message
    message = bad(tmp_path, [(0, pack_payload(1, image)), (1, pack_payload(1, image))], idx="0\t0\n1\t17\n")
    assert re.search(
        r"record key 1 at byte 17: the record does not start with the RecordIO magic word: the .idx", message
    )


def test_a_rec_without_its_idx_or_a_missing_rec_is_one_line(tmp_path):
    rec = write_records(tmp_path / "t.rec", [(0, pack_payload(1, jpeg_bytes(0)))])
    rec.with_suffix(".idx").unlink()
    with pytest.raises(DataError, match=r"data.root: '.*t.rec' has no index 't.idx' beside it"):
        scan_identities(rec)
    with pytest.raises(DataError, match=r"data.root '.*gone.rec' not found: set data.root to an insightface or im2rec"):
        scan_identities(tmp_path / "gone.rec")


def test_split_and_filters_work_on_a_rec_as_on_its_folder(tmp_path):
    faces = make_faces(tmp_path / "faces", identities=6, per_identity=3, size=(16, 16))
    (faces / "id05" / "img01.png").unlink()
    (faces / "id05" / "img02.png").unlink()  # 1 image: dropped by min_images_per_identity=2
    from facetrain.data import pack_folder

    rec = pack_folder(faces, tmp_path / "pack" / "train.rec", png=True, workers=0, progress=False).rec
    folder_cfg = tiny_config(faces, tmp_path / "run", data={"val_identities": 2}).data
    rec_cfg = dataclasses.replace(folder_cfg, root=str(rec))
    from_folder, from_rec = split_identities(folder_cfg), split_identities(rec_cfg)
    for kept_folder, kept_rec in zip(from_folder, from_rec, strict=True):
        assert [len(images) for _, images in kept_folder] == [len(images) for _, images in kept_rec]
        assert [name[-1] for name, _ in kept_folder] == [name for name, _ in kept_rec]  # id0N -> label N
    datasets = build_datasets(rec_cfg)
    assert isinstance(datasets.train, RecordDataset) and datasets.num_classes == 3 and len(datasets.val) == 6


def test_an_undecodable_image_is_replaced_and_counted_across_workers(tmp_path, caplog):
    records = insightface_records([3, 3])
    records[2] = (2, pack_payload(0, b"\xff\xd8\xff not really a jpeg", id=2))  # key 2: identity 0's second image
    rec = write_records(tmp_path / "t.rec", records)
    dataset = make_dataset(scan_identities(rec), Preprocess(16))
    assert dataset.source.file._fd is None  # the main process has opened nothing: each worker opens its own
    loader = train_loader(dataset, EpochSampler(len(dataset), 0, False), 3, num_workers=2, pin_memory=False)
    for _ in range(2):
        labels = torch.cat([batch[1] for batch in loader])
        assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert dataset.bad_records == 2 and dataset.source.file._fd is None
    caplog.clear()
    image, label = dataset[1]
    assert label == 0 and torch.equal(image, dataset[2][0])  # key 2 is replaced by key 3, same identity
    assert re.search(r"t.rec' record key 2 at byte \d+: its image cannot be decoded: trained on another image of "
                     r"identity '0' instead", caplog.text)  # fmt: skip


def test_an_identity_with_no_decodable_image_stops_with_its_record(tmp_path):
    records = insightface_records([1, 2])
    records[1] = (1, pack_payload(0, b"garbage", id=1))
    dataset = make_dataset(scan_identities(write_records(tmp_path / "t.rec", records)), Preprocess(16))
    with pytest.raises(DataError, match=r"record key 1 at byte \d+: none of the 1 images of identity '0' can be"):
        dataset[0]


def test_each_rank_reads_only_its_own_slice_of_records(tmp_path):
    rec = write_records(tmp_path / "t.rec", insightface_records([4, 4, 4, 4]))
    read: dict[int, set[int]] = {0: set(), 1: set()}
    for rank in (0, 1):
        dataset = make_dataset(scan_identities(rec), Preprocess(16))
        original = dataset.source.payload
        dataset.source.payload = lambda position, seen=read[rank], read=original: seen.add(position) or read(position)
        for key in EpochSampler(len(dataset), seed=3, hflip=True, batch_size=2, rank=rank, world=2):
            dataset[key]
    assert read[0].isdisjoint(read[1]) and len(read[0]) == len(read[1]) == 8


def test_malformed_identity_records_fall_back_to_the_image_labels(tmp_path, caplog):
    records = insightface_records([2, 3])
    records[-1] = (records[-1][0], pack_payload(1, b""))  # identity 1's record holds one number (merged files do)
    rec = write_records(tmp_path / "t.rec", records)
    assert identities_of(rec) == [("0", 2), ("1", 3)]
    assert (
        "not an identity record (flag 0, labels [1])" in caplog.text and "labels read from the 5 image" in caplog.text
    )


def test_above_2_24_keys_the_rounded_float32_ranges_are_not_trusted(tmp_path, monkeypatch):
    """Glint360K's 17.1M keys: float32 rounds identity ranges (and the header's first) by up to 2 keys."""
    records = insightface_records([3, 2, 2])  # images 1..7, identity records 8..10, the header
    header, images, identities = records[0], records[1:8], records[8:]
    wrong = [
        (key, pack_payload(bounds, b"")) for (key, _), bounds in zip(identities, ([1, 3], [3, 7], [7, 8]), strict=True)
    ]
    rounded_header = (0, pack_payload([9, 11], b""))  # first is 8 really
    rec = write_records(tmp_path / "t.rec", [rounded_header, *images, *wrong])
    truth = [("0", 3), ("1", 2), ("2", 2)]
    assert identities_of(rec) != truth  # below 2^24 the ranges are trusted: these rounded ones mislabel
    monkeypatch.setattr(layouts, "EXACT_KEYS", 9)  # as if these keys were above 2^24
    assert identities_of(rec) == truth  # each image's own label, and the first identity record found at key 8
    assert header[0] == 0 and scan_identities(rec)[0][1].source.detail.startswith("insightface layout: a header")


def test_the_dataset_folder_is_pointed_to_its_train_rec_and_a_folder_named_rec_is_a_folder(tmp_path):
    write_records(tmp_path / "ms1m" / "train.rec", insightface_records([2, 2]))
    with pytest.raises(DataError, match=r"'.*ms1m' holds a RecordIO dataset, not identity folders: set data.root: "):
        scan_identities(tmp_path / "ms1m")
    faces = make_faces(tmp_path / "faces.rec", identities=2, per_identity=2, size=(16, 16))
    assert [(name, len(images)) for name, images in scan_identities(faces)] == [("id00", 2), ("id01", 2)]


def test_scanned_labels_are_cached_until_the_files_change(tmp_path, monkeypatch):
    monkeypatch.setenv("FACETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    records = [(key, pack_payload(label, jpeg_bytes(key))) for key, label in enumerate([1, 0, 1, 0])]
    rec = write_records(tmp_path / "t.rec", records)
    assert identities_of(rec) == [("0", 2), ("1", 2)]
    assert len(list((tmp_path / "cache" / "record-labels").iterdir())) == 1
    scans, scan = [], layouts._scan_labels
    monkeypatch.setattr(layouts, "_scan_labels", lambda *args: scans.append(1) or scan(*args))
    assert identities_of(rec) == [("0", 2), ("1", 2)] and scans == []  # from the cache
    write_records(rec, [(key, pack_payload(label, jpeg_bytes(key))) for key, label in enumerate([1, 1, 1, 0])])
    assert identities_of(rec) == [("0", 1), ("1", 3)] and scans == [1]  # the file changed: scanned again
    next((tmp_path / "cache" / "record-labels").iterdir()).write_bytes(b"not a zip")
    assert identities_of(rec) == [("0", 1), ("1", 3)] and scans == [1, 1]  # an unreadable cache: scanned again


def test_a_rec_val_root_is_not_warned_about_shared_names(tmp_path, caplog):
    train = write_records(tmp_path / "train" / "train.rec", insightface_records([2, 2, 2]))
    held = write_records(tmp_path / "val" / "train.rec", insightface_records([2, 2]))
    cfg = tiny_config(train, tmp_path / "run", data={"val_root": str(held)}).data
    training, held_out = split_identities(cfg)
    assert [name for name, _ in held_out] == ["0", "1"] and [name for name, _ in training] == ["0", "1", "2"]
    assert "held-out people should be different people" not in caplog.text  # record names are only numbers
    folders = make_faces(tmp_path / "f", identities=3, per_identity=2, size=(16, 16))
    split_identities(tiny_config(folders, tmp_path / "run", data={"val_root": str(folders)}).data)
    assert "held-out people should be different people" in caplog.text  # folder names do say who
