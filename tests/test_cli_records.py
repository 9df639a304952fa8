"""``.rec`` datasets from the command line: pack -> train round trip, unpack, check, one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, write_tiny_yaml
from typer.testing import CliRunner

from facetrain.cli import app

runner = CliRunner()
FIXTURES = REPO / "tests" / "data" / "fixtures"
HEAD = "{type: arcface, s: 16.0, m: 0.2}"
TRAIN = "{epochs: 2, batch_size: 6, lr: 0.05, warmup_epochs: 0.5, log_every_steps: 1}"


def invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def test_training_from_a_lossless_pack_gives_the_same_weights_and_accuracy_as_the_folder(tmp_path):
    config = write_tiny_yaml(tmp_path, HEAD, TRAIN)
    packed = invoke("pack", "--root", tmp_path / "faces", "--out", tmp_path / "rec" / "train.rec", "--png")
    assert packed.exit_code == 0, packed.output
    assert "packed 36 images of 6 identities" in packed.output and "36 stored as they were" in packed.output
    runs = {}
    for name, root in (("folder", tmp_path / "faces"), ("rec", tmp_path / "rec" / "train.rec")):
        result = invoke("train", "--config", config, "--no-progress", "--set", f"data.root={root}",
                        "--set", f"run_dir={tmp_path / name}")  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[name] = (torch.load(tmp_path / name / "last.pt", weights_only=True), result.stdout)
    (folder, folder_out), (rec, rec_out) = runs["folder"], runs["rec"]
    for part in ("embedder", "head"):
        assert all(torch.equal(folder[part][key], rec[part][key]) for key in folder[part])
    accuracy = re.compile(r"held-out all-pairs accuracy.*")
    assert accuracy.search(folder_out).group() == accuracy.search(rec_out).group()
    assert rec["class_names"] == ["0", "1", "2", "4"] and folder["class_names"] == ["id00", "id01", "id02", "id04"]


def test_check_on_a_rec_reports_layout_identities_and_sampled_image_size(tmp_path):
    config = write_tiny_yaml(tmp_path, HEAD, TRAIN)
    rec = tmp_path / "rec" / "train.rec"
    assert invoke("pack", "--root", tmp_path / "faces", "--out", rec).exit_code == 0
    result = invoke("check", "--config", config, "--set", f"data.root={rec}")
    assert result.exit_code == 0, result.output
    assert "data.root: 6 identities, 36 images; 4 for training, 2 held out" in result.stdout
    assert (
        f"'{rec}': insightface layout: a header record at key 0, 36 image records, 6 identity records" in result.stdout
    )
    assert "image size of 36 records sampled evenly: 24x24 (36)" in result.stdout


def test_bad_rec_files_are_one_line_and_exit_2(tmp_path):
    config = write_tiny_yaml(tmp_path, HEAD, TRAIN)
    for root, expected in (
        (FIXTURES / "mx_boxes.rec", "its label is 6 numbers [2, 5, 0, 0.1, ...], not one identity"),
        (tmp_path / "none.rec", "not found: set data.root to an insightface or im2rec train.rec"),
    ):
        result = invoke("train", "--config", config, "--no-progress", "--set", f"data.root={root}")
        assert result.exit_code == 2, result.output
        assert result.stderr.count("error:") == 1 and expected in result.stderr and "Traceback" not in result.output


def test_a_damaged_record_met_during_training_stops_with_its_key_and_offset(tmp_path):
    config = write_tiny_yaml(tmp_path, HEAD, TRAIN)
    rec = tmp_path / "rec" / "train.rec"
    assert invoke("pack", "--root", tmp_path / "faces", "--out", rec).exit_code == 0
    index = rec.with_suffix(".idx")
    lines = index.read_text().splitlines()
    key, offset = lines[4].split("\t")
    lines[4] = f"{key}\t{int(offset) + 4}"  # the .idx points into the middle of a record
    index.write_text("\n".join(lines) + "\n")
    result = invoke("train", "--config", config, "--no-progress", "--set", f"data.root={rec}",
                    "--set", "data.num_workers=1", "--set", "data.val_identities=0")  # fmt: skip
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"record key {key} at byte {int(offset) + 4}: the record does not start" in errors[0]


def test_unpack_writes_folders_and_refuses_a_used_one(tmp_path):
    result = invoke("unpack", FIXTURES / "mx_im2rec.rec", "--out", tmp_path / "out")
    assert result.exit_code == 0 and "unpacked 9 images of 3 identities" in result.stdout
    assert sorted(path.name for path in (tmp_path / "out" / "2").iterdir()) == ["0.jpg", "3.jpg", "8.jpg"]
    again = invoke("unpack", FIXTURES / "mx_im2rec.rec", "--out", tmp_path / "out")
    assert again.exit_code == 2 and "already exists and is not an empty folder" in again.stderr


@pytest.mark.alone  # two ranks
def test_two_processes_train_from_a_rec(tmp_path):
    config = write_tiny_yaml(tmp_path, HEAD, "{epochs: 1, batch_size: 4, lr: 0.05, warmup_epochs: 0.5}")
    rec = tmp_path / "rec" / "train.rec"
    assert invoke("pack", "--root", tmp_path / "faces", "--out", rec).exit_code == 0
    result = subprocess.run(
        [sys.executable, "-m", "facetrain", "train", "--config", str(config), "--nproc-per-node", "2",
         "--no-progress", "--set", f"data.root={rec}", "--set", "data.num_workers=1"],
        capture_output=True, text=True, cwd=REPO, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("insightface layout") == 1  # logged by the main rank only
    assert sum(line.startswith("checkpoint: ") for line in result.stdout.splitlines()) == 1
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["class_names"] == ["0", "1", "2", "4"]


def test_files_written_by_mxnet_train_in_either_layout(tmp_path):
    config = write_tiny_yaml(tmp_path, HEAD, "{epochs: 1, batch_size: 3, lr: 0.05, warmup_epochs: 0.5}")
    for name in ("mx_insightface", "mx_im2rec"):
        result = invoke("train", "--config", config, "--no-progress", "--set", f"data.root={FIXTURES / name}.rec",
                        "--set", "data.val_identities=0", "--set", f"run_dir={tmp_path / name}")  # fmt: skip
        assert result.exit_code == 0, result.output
        state = torch.load(tmp_path / name / "last.pt", weights_only=True)
        assert state["class_names"] == ["0", "1", "2"] and state["step"] == 3  # 9 images in batches of 3
        unpacked = invoke("unpack", FIXTURES / f"{name}.rec", "--out", tmp_path / f"{name}_folder")
        assert unpacked.exit_code == 0 and "unpacked 9 images of 3 identities" in unpacked.stdout


@pytest.mark.parametrize("cache", ["none", "auto"])
def test_a_record_whose_image_does_not_decode_is_replaced_named_and_counted(tmp_path, cache):
    config = write_tiny_yaml(tmp_path, HEAD, "{epochs: 1, batch_size: 6, lr: 0.05, warmup_epochs: 0.5}")
    rec = tmp_path / "rec" / "train.rec"
    assert invoke("pack", "--root", tmp_path / "faces", "--out", rec).exit_code == 0
    key, offset = rec.with_suffix(".idx").read_text().splitlines()[2].split("\t")
    data = bytearray(rec.read_bytes())
    start = int(offset) + 8 + 24  # past the chunk header and the record header: the JPEG itself
    data[start : start + 64] = bytes(64)
    rec.write_bytes(bytes(data))
    result = invoke("train", "--config", config, "--no-progress", "--set", f"data.root={rec}",
                    "--set", "data.val_identities=0", "--set", "data.num_workers=0",
                    "--set", f"data.cache={cache}")  # fmt: skip
    assert result.exit_code == 0, result.output  # (a worker's warning goes to its own stderr: 0 workers here)
    assert f"record key {key} at byte {offset}: its image cannot be decoded: trained on another image" in result.stderr
    if cache == "none":  # counted as it is read
        assert "1 reads of data.root records whose image cannot be decoded so far" in result.stderr
    else:  # found once, while caching
        assert "1 images of data.root cannot be decoded (found while caching)" in result.stderr


def test_pack_and_unpack_mistakes_are_one_line_and_exit_2(tmp_path):
    write_tiny_yaml(tmp_path, HEAD, TRAIN)
    rec = tmp_path / "rec" / "train.rec"
    for args, expected in (
        (["pack", "--root", tmp_path / "faces", "--out", tmp_path / "rec"], "does not end in .rec: name the file"),
        (["pack", "--root", tmp_path / "missing", "--out", rec], "--root: folder"),
        (["pack", "--root", FIXTURES / "mx_im2rec.rec", "--out", rec], "is already a .rec: pack reads an identity"),
        (["unpack", tmp_path / "none.rec", "--out", tmp_path / "out"], "FILE '"),
        (["unpack", FIXTURES / "mx_boxes.rec", "--out", tmp_path / "out"], "its label is 6 numbers"),
    ):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("error:") == 1 and expected in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not rec.exists()


@pytest.mark.alone  # two ranks
def test_a_bad_rec_under_two_processes_is_reported_once(tmp_path):
    config = write_tiny_yaml(tmp_path, HEAD, TRAIN)
    result = subprocess.run(
        [sys.executable, "-m", "facetrain", "train", "--config", str(config), "--nproc-per-node", "2",
         "--no-progress", "--set", f"data.root={FIXTURES / 'mx_boxes.rec'}"],
        capture_output=True, text=True, cwd=REPO, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("error:") == 1 and "its label is 6 numbers" in result.stderr
    assert "Traceback" not in result.stderr
