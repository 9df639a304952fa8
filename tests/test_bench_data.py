"""``scripts/bench_data.py`` runs end to end on a tiny set and writes its JSON (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, make_faces


def test_bench_data_times_folder_and_rec_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench_data.py", "--images", "120", "--timed-images", "64", "--batch-size", "16",
         "--repeats", "1", "--workers", "0", "--cache", str(tmp_path / "cache"), "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures["images_per_second"]) == {"folder workers=0", "rec workers=0"}
    assert all(speed > 0 for speed in figures["images_per_second"].values())
    assert set(figures["per_image_ms"]) == {"read_file_ms", "read_record_ms", "decode_ms", "transform_ms"}
    assert figures["dataset"]["images"] == 120 and (tmp_path / "cache" / "120x112" / "rec" / "train.idx").is_file()


def test_bench_data_times_epochs_with_and_without_the_cache(tmp_path):
    faces = make_faces(tmp_path / "faces", identities=6, per_identity=6, size=(20, 24))
    out = tmp_path / "epochs.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench_data.py", "--train", str(faces), "--epochs", "2", "--held-out", "2",
         "--image-size", "32", "--train-batch", "8", "--train-workers", "0", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    none, ram = figures["summary"]["none"], figures["summary"]["ram"]
    assert none["cache_bytes"] == {"training": 0, "verification": 0}
    assert ram["cache_bytes"] == {"training": 24 * 3 * 32 * 32, "verification": 12 * 3 * 32 * 32}
    assert len(ram["later_evaluations_s"]) == 2 and ram["caching_s"]["TrainImages"] > 0
    assert figures["dataset"]["files"] == 36 and "epoch (training part)" in result.stdout
