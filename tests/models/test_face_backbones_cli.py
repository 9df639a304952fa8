"""The face backbones through every command: train, resume, eval, export, embed, verify, outliers, check, torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_tiny_yaml
from typer.testing import CliRunner

from facetrain.checkpoint import load_checkpoint
from facetrain.cli import app

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
HEAD = "{type: subcenter_arcface, s: 16.0, m: 0.2, k: 2}"  # sub-centres, so outliers can run too
TRAIN = "{epochs: 1, batch_size: 4, lr: 0.05, warmup_epochs: 0.5, log_every_steps: 1}"


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.output


def test_mobilefacenet_through_every_command(tmp_path: Path) -> None:
    config = str(write_tiny_yaml(tmp_path, HEAD, TRAIN))
    backbone = ("--set", "model.backbone=mobilefacenet")
    invoke("train", "--config", config, *backbone, "--no-progress", "--device", "cpu")
    last = tmp_path / "run" / "last.pt"
    invoke("train", "--resume", str(last), "--no-progress", "--set", "train.epochs=2")
    state = load_checkpoint(last)
    assert state["epoch"] == 2 and state["config"]["model"]["backbone"] == "mobilefacenet"
    assert any(key.startswith("neck.layers.0.") for key in state["embedder"])  # the GDC output layer

    pairs = tmp_path / "pairs.txt"
    same = [f"id0{i}/img00.png id0{i}/img0{j}.png 1" for i in range(4) for j in (1, 2)]
    different = [f"id0{i}/img00.png id0{(i + 1) % 4}/img01.png 0" for i in range(4)] * 2
    pairs.write_text("\n".join(same + different) + "\n")
    faces = tmp_path / "faces"
    invoke("eval", "--checkpoint", str(last), "--pairs", str(pairs), "--images", str(faces), "--folds", "2")
    model = tmp_path / "model.pt"
    assert "mobilefacenet" in invoke("export", "--checkpoint", str(last), "--out", str(model))
    invoke("embed", "--model", str(model), "--images", str(faces), "--out", str(tmp_path / "e.npz"))
    verdict = invoke("verify", str(model), str(faces / "id00" / "img00.png"), str(faces / "id00" / "img01.png"))
    assert verdict.startswith("score: ")
    invoke("outliers", "--checkpoint", str(last), "--out", str(tmp_path / "o.tsv"))
    table = invoke("check", "--config", config, *backbone, "--set", "data.image_size=48")
    assert "backbone 512×3×3 → pool 512×7×7 → gdc 512×1×1 → flatten 512 → projection 16" in table


@pytest.mark.alone  # a launcher and its ranks
def test_torchrun_trains_an_iresnet_with_a_sharded_partial_fc_head(tmp_path: Path) -> None:
    config = str(write_tiny_yaml(tmp_path, HEAD, TRAIN))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    args = ["facetrain", "train", "--config", config, "--set", "model.backbone=iresnet18"]
    args += ["--set", "head.sample_rate=0.5"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["world_size"] == 2 and state["config"]["model"]["backbone"] == "iresnet18"
    assert state["embedder"]["neck.fc.weight"].shape == (16, 512 * 7 * 7)
