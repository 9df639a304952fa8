"""``facetrain eval --model``: an export or a foreign embedder scored through the same protocols as a
checkpoint (pairs lists, the suite, IJB)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ORL, REPO
from ijb_set import build_layout
from typer.testing import CliRunner

from facetrain.cli import app
from facetrain.models import load_model

ORL_PAIRS = REPO / "facetrain" / "assets" / "orl_holdout_pairs.txt"
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
runner = CliRunner()


def cli(*args: str | Path):
    return runner.invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def models(orl_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The checkpoint's export, and its bare embedder as a foreign TorchScript file (no metadata): fed
    (x - 127.5) / 127.5, the foreign default, it is the same network under another convention."""
    folder = tmp_path_factory.mktemp("models")
    export = cli("export", "--checkpoint", orl_checkpoint, "--out", folder / "export.pt")
    assert export.exit_code == 0, export.output
    embedder = load_model(orl_checkpoint, torch.device("cpu")).embedder.eval()
    torch.jit.save(torch.jit.trace(embedder, torch.zeros(2, 3, 32, 32)), str(folder / "foreign.pt"))
    return {"export": folder / "export.pt", "foreign": folder / "foreign.pt", "checkpoint": orl_checkpoint}


def accuracy(*args: str | Path, tmp: Path) -> dict:
    out = tmp / "eval.json"
    result = cli("eval", *args, "--pairs", ORL_PAIRS, "--images", ORL, "--no-flip", "--json", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())["sets"][0]["plain"]


def test_an_export_and_a_foreign_model_score_pairs_as_the_checkpoint(models, tmp_path):
    expected = accuracy("--checkpoint", models["checkpoint"], tmp=tmp_path)
    exported = accuracy("--model", models["export"], tmp=tmp_path)
    foreign = accuracy("--model", models["foreign"], "--input-size", "32", tmp=tmp_path)
    for got in (exported, foreign):
        assert got["accuracy"] == pytest.approx(expected["accuracy"])
        assert got["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    swapped = accuracy("--model", models["foreign"], "--input-size", "32", "--mean", "0", "--std", "255", tmp=tmp_path)
    assert swapped["roc_auc"] != pytest.approx(expected["roc_auc"], abs=1e-6)  # another convention, other scores


def test_a_model_runs_the_ijb_protocol_and_the_report_names_it(models, tmp_path):
    layout = build_layout(tmp_path / "ijb", templates=12, subjects=4)
    crops = layout.root / "loose_crop"
    crops.mkdir()
    for index, (name, _, _) in enumerate(layout.rows):  # any face photo stands in for a loose crop here
        (crops / name).write_bytes((ORL / f"s{index % 40 + 1}" / "1.pgm").read_bytes())
    numbers = {}
    for name, source in (("model", ("--model", models["foreign"], "--input-size", "32")),
                         ("checkpoint", ("--checkpoint", models["checkpoint"]))):  # fmt: skip
        result = cli("eval", *source, "--ijb", layout.root, "--json", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        numbers[name] = json.loads((tmp_path / f"{name}.json").read_text())["ijb"]
    assert numbers["model"]["model"] == "foreign.pt" and numbers["checkpoint"]["model"].startswith("checkpoint '")
    # The same network under the foreign convention: the same features, so the same numbers.
    assert numbers["model"]["roc_auc"] == pytest.approx(numbers["checkpoint"]["roc_auc"], abs=1e-6)
    assert numbers["model"]["tar_at_far"] == pytest.approx(numbers["checkpoint"]["tar_at_far"])
    exported = cli("eval", "--model", models["export"], "--ijb", layout.root)
    assert exported.exit_code == 0 and "this model's outputs have unit norm" in exported.stdout


def test_model_options_are_checked_with_the_rest(models):
    result = cli("eval", "--model", models["export"], "--mean", "127.5", "--pairs", ORL_PAIRS, "--images", ORL)
    assert result.exit_code == 2 and "is a facetrain export and carries its preprocessing" in result.stderr
    result = cli("eval", "--checkpoint", models["checkpoint"], "--channels", "bgr", "--pairs", ORL_PAIRS)
    assert result.exit_code == 2 and "--channels describes a --model file's input" in result.stderr
    result = cli("eval", "--checkpoint", models["checkpoint"], "--model", models["export"], "--pairs", ORL_PAIRS)
    assert result.exit_code == 2 and "give --checkpoint or --model, not both" in result.stderr
    result = cli("eval", "--model", models["foreign"], "--pairs", ORL_PAIRS, "--images", ORL)
    assert result.exit_code == 2 and "--input-size" in result.stderr and "Traceback" not in result.output
