"""Every head trains from the command line on the bundled ORL demo data and saves its state."""

import pytest
import torch
from conftest import REPO
from typer.testing import CliRunner

from facetrain.cli import app
from facetrain.config import HEAD_OPTIONS, HEAD_TYPES

runner = CliRunner()
DEMO = str(REPO / "configs" / "demo.yaml")


@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_every_head_trains_on_the_demo_data(kind, tmp_path):
    unset = ["--set", "head.s=null"] if kind == "softmax" else []  # demo.yaml sets s, which softmax does not take
    settings = [
        "head.type=" + kind,
        f"run_dir={tmp_path}",
        "train.epochs=1",
        "data.image_size=32",
        "data.num_workers=0",
    ]
    args = ["train", "--config", DEMO, "--no-progress", "--device", "cpu", *unset]
    for setting in settings:
        args += ["--set", setting]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "orl_holdout 10-fold accuracy: before training" in result.stdout
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["config"]["head"]["type"] == kind
    for name, default in HEAD_OPTIONS[kind].items():  # the options used are saved, s from demo.yaml
        assert state["config"]["head"][name] == (32.0 if name == "s" else default)
    buffers = {"curricularface": {"t"}, "adaface": {"norm_mean", "norm_std"}}.get(kind, set())
    assert buffers <= set(state["head"])
    rows = 30 * HEAD_OPTIONS[kind].get("k", 1)
    weight = state["head"]["classifier.weight" if kind == "softmax" else "class_centers"]
    assert weight.shape == (rows, 128)
