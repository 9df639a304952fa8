import os
import subprocess
import sys

import pytest
from conftest import REPO, make_faces
from typer.testing import CliRunner

from facetrain.cli import app

runner = CliRunner()


def write_config(tmp_path, data_root, extra: str = "") -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        f"data: {{root: {data_root}, image_size: 32, num_workers: 0, val_identities: 2}}\n"
        "model: {backbone: resnet18, embedding_dim: 16}\n"
        "head: {s: 16.0, m: 0.2}\n"
        "train: {epochs: 1, batch_size: 8, lr: 0.05, warmup_epochs: 0.5, log_every_steps: 1}\n" + extra
    )
    return str(path)


def test_train_prints_checkpoint_and_holdout_accuracy(tmp_path):
    faces = make_faces(tmp_path / "faces", identities=6, per_identity=6)
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            write_config(tmp_path, faces),
            "--no-progress",
            "--set",
            "train.epochs=2",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "checkpoint: " in result.stdout and "(epoch 2, step 6)" in result.stdout
    assert "held-out all-pairs accuracy: before training" in result.stdout
    assert f"best checkpoint: {tmp_path / 'run' / 'best.pt'}" in result.stdout
    assert (tmp_path / "run" / "last.pt").is_file()

    # Resume from the checkpoint alone (its config travels inside it), two more epochs.
    resumed = runner.invoke(
        app, ["train", "--resume", str(tmp_path / "run" / "last.pt"), "--no-progress", "--set", "train.epochs=4"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert "(epoch 4, step 12)" in resumed.stdout and "at resume" in resumed.stdout


def test_config_typo_is_one_clear_error(tmp_path):
    faces = make_faces(tmp_path / "faces")
    result = runner.invoke(app, ["train", "--config", write_config(tmp_path, faces), "--set", "model.embeding_dim=8"])
    assert result.exit_code == 2
    assert "model.embeding_dim: unknown key (did you mean 'model.embedding_dim'?)" in result.stderr
    assert "Traceback" not in result.output


def test_missing_dataset_is_one_line(tmp_path):
    result = runner.invoke(app, ["train", "--config", write_config(tmp_path, tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: data.root: folder") and "does not exist" in result.stderr


def test_bad_checkpoint_for_resume(tmp_path):
    junk = tmp_path / "last.pt"
    junk.write_bytes(b"\x00garbage")
    result = runner.invoke(app, ["train", "--resume", str(junk)])
    assert result.exit_code == 2
    assert "cannot be used: it is a binary file of unknown kind" in result.stderr and "Traceback" not in result.output


def test_debug_env_shows_the_exception_and_keeps_exit_code_2(tmp_path):
    faces = make_faces(tmp_path / "faces")
    result = runner.invoke(
        app, ["train", "--config", write_config(tmp_path, faces), "--set", "train.lr=-1"], env={"FACETRAIN_DEBUG": "1"}
    )
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr and "train.lr" in result.stderr


def test_needs_config_or_resume():
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2


def test_help_ends_with_an_example():
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "Example: facetrain train --config" in result.stdout


@pytest.mark.parametrize("debug", [False, True])
def test_real_process_exit_code_and_traceback(tmp_path, debug):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n")
    env = {**os.environ, "FACETRAIN_DEBUG": "1" if debug else "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "facetrain", "train", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert "train.lr: must be > 0.0, got -1" in proc.stderr
    if debug:  # the traceback is extra: the exit code stays 2
        assert proc.returncode == 2 and "Traceback" in proc.stderr
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_during_training_is_one_line_naming_the_file(tmp_path, workers):
    faces = make_faces(tmp_path / "faces", identities=3, per_identity=4)
    (faces / "id01" / "img02.png").write_bytes(b"\x89PNG broken")
    config = write_config(tmp_path, faces)
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            config,
            "--no-progress",
            "--set",
            "data.val_identities=0",
            "--set",
            f"data.num_workers={workers}",
            "--set",
            "train.batch_size=4",
            "--set",
            "data.cache=none",  # decoded as it is read: the bad file is found mid-epoch
        ],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert errors[0].startswith("error: cannot read image") and "id01/img02.png" in errors[0]
    assert "Traceback" not in result.output


def test_a_corrupt_image_found_while_caching_is_skipped_and_counted(tmp_path):
    faces = make_faces(tmp_path / "faces", identities=3, per_identity=4)
    (faces / "id01" / "img02.png").write_bytes(b"\x89PNG broken")
    config = write_config(tmp_path, faces)
    options = ["--no-progress", "--set", "data.val_identities=0", "--set", "train.batch_size=4"]
    result = runner.invoke(app, ["train", "--config", config, *options, "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    named = [line for line in lines if "trained on another image of identity 'id01' instead" in line]
    assert len(named) == 1 and "cannot read image" in named[0] and "id01/img02.png" in named[0]
    assert "1 images of data.root cannot be decoded (found while caching)" in result.stderr


def test_cache_ram_on_a_machine_without_the_memory_is_one_line_and_exit_2(tmp_path, monkeypatch):
    from facetrain.data import cache

    monkeypatch.setattr(cache, "available_memory", lambda: 10_000)  # bytes: far less than 16 images
    faces = make_faces(tmp_path / "faces", identities=6, per_identity=4)
    config = write_config(tmp_path, faces)
    result = runner.invoke(app, ["train", "--config", config, "--no-progress", "--set", "data.cache=ram"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert errors[0].startswith("error: data.cache: ram: the training images (") and "set data.cache: auto" in errors[0]


def test_an_interrupt_before_anything_is_written_claims_no_file(tmp_path, monkeypatch):
    import facetrain.config

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(facetrain.config, "load_config", interrupted)
    result = runner.invoke(app, ["check", "--config", str(tmp_path / "any.yaml")])
    assert result.exit_code == 130
    assert result.stderr.strip() == "interrupted: files are replaced atomically, so none is left half-written"
