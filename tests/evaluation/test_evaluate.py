import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ORL, REPO, tiny_config
from typer.testing import CliRunner

from facetrain.cli import app
from facetrain.config import ModelConfig
from facetrain.data.preprocess import Preprocess
from facetrain.evaluation.embedding import embed_pairs_images
from facetrain.evaluation.evaluate import report_pairs
from facetrain.evaluation.pairs import PairList, read_pairs
from facetrain.models import build_embedder, load_model
from facetrain.runtime import Precision
from facetrain.training.trainer import Trainer

CPU = torch.device("cpu")
FP32 = Precision(None)
ORL_PAIRS = REPO / "facetrain" / "assets" / "orl_holdout_pairs.txt"
runner = CliRunner()


def list_pairs(tmp_path: Path, root: Path, lines: list[str]) -> Path:
    path = tmp_path / "pairs_list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


class Counting(torch.nn.Module):
    """Wraps an embedder and counts the images it sees."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return self.inner(images)


@pytest.fixture
def embedder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_embedder(ModelConfig(backbone="resnet18", embedding_dim=16), 32).eval()


def test_each_unique_image_is_embedded_once_and_flip_fusion_is_exact(tmp_path, faces, embedder):
    pairs_file = list_pairs(tmp_path, faces, [
        "id00/img00.png id00/img01.png 1",
        "id00/img00.png id01/img00.png 0",  # img00 repeats
        "id01/img00.png id01/img01.png 1",
        "id00/img01.png id01/img01.png 0",
    ])  # fmt: skip
    pairs = read_pairs(pairs_file, faces)
    assert len(pairs.images) == 4
    counting = Counting(embedder).eval()
    preprocess = Preprocess(32)
    plain, fused = embed_pairs_images(counting, pairs, preprocess, CPU, FP32, batch_size=3)
    assert counting.seen == 2 * 4  # each unique image and its mirror, once
    image = preprocess.load(pairs.images[2]).unsqueeze(0)
    with torch.no_grad():
        direct, mirrored = embedder(image), embedder(image.flip(-1))
    assert torch.allclose(fused[2], F.normalize(direct + mirrored, dim=1)[0], atol=1e-5)
    assert torch.allclose(plain[2], F.normalize(direct, dim=1)[0], atol=1e-5)
    no_flip_plain, no_fused = embed_pairs_images(embedder, pairs, preprocess, CPU, FP32, flip=False)
    assert no_fused is None and torch.allclose(no_flip_plain, plain, atol=1e-6)


def synthetic_pairs(fmt: str, folds: list[int] | None, same: list[bool]) -> PairList:
    count = len(same)
    return PairList(
        name="synthetic", source=Path("synthetic.txt"), format=fmt, images=[Path(f"{i}.png") for i in range(2 * count)],
        left=list(range(0, 2 * count, 2)), right=list(range(1, 2 * count, 2)), is_same=same, folds=folds,
    )  # fmt: skip


def test_fold_rules_per_format():
    same = [True] * 20 + [False] * 20  # all same pairs first, like the View-1 files
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(80, 8, generator=generator), dim=1)
    view1 = report_pairs(synthetic_pairs("lfw", None, same), embeddings, None, folds=4)
    assert view1.folds == 4 and view1.fold_rule == "4 folds, i-th same and i-th different pair to fold i mod k"
    binary = report_pairs(synthetic_pairs("bin", None, same), embeddings, None, folds=4)
    assert binary.folds == 10 and "contiguous" in binary.fold_rule
    declared = report_pairs(synthetic_pairs("lfw", [i // 20 for i in range(40)], same), embeddings, None, folds=4)
    assert declared.folds == 2 and declared.fold_rule == "2 folds, as declared by the file"
    assert view1.plain.tar_at_far["1e-1"] is not None and view1.plain.tar_at_far["1e-2"] is None
    assert view1.flip is None and view1.headline is view1.plain


def test_load_model_reproduces_the_trained_embedder(faces, tmp_path):
    trainer = Trainer(tiny_config(faces, tmp_path / "run", train={"epochs": 1}), progress=False)
    trainer.setup()
    trainer.fit()
    loaded = load_model(tmp_path / "run" / "last.pt", CPU)
    images = torch.randn(3, 3, 32, 32)
    trainer.embedder.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.embedder(images), trainer.embedder(images), atol=1e-6)
    assert loaded.preprocess == Preprocess(32) and not loaded.embedder.training


def test_cli_eval_on_the_bundled_orl_pairs(orl_checkpoint, tmp_path):
    result = runner.invoke(app, [
        "eval", "--checkpoint", str(orl_checkpoint), "--pairs", str(ORL_PAIRS), "--images", str(ORL),
        "--json", str(tmp_path / "eval.json"), "--plot", str(tmp_path / "eval.png"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "orl_holdout_pairs: 600 pairs (300 same / 300 different), 100 unique images" in out
    for label in ("accuracy", "ROC AUC", "EER", "TAR@FAR=1e-1", "TAR@FAR=1e-2"):
        assert label in out
    assert "n/a (only 300 negatives)" in out  # FAR 1e-3 needs 1000 negatives
    report = json.loads((tmp_path / "eval.json").read_text())["sets"][0]
    assert len(report["flip"]["fold_accuracies"]) == 10 and report["unique_images"] == 100
    mean = sum(report["flip"]["fold_accuracies"]) / 10
    assert report["flip"]["accuracy"] == pytest.approx(mean)
    assert report["flip"]["tar_at_far"]["1e-3"] is None
    assert (tmp_path / "eval.png").stat().st_size > 10_000


def test_cli_eval_errors_are_one_line(orl_checkpoint, tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("2\ns1\t1\t2\ns2\t1\n")
    result = runner.invoke(
        app, ["eval", "--checkpoint", str(orl_checkpoint), "--pairs", str(bad), "--images", str(ORL)]
    )
    assert result.exit_code == 2
    assert "pairs.txt:3: expected 3 or 4 tab-separated fields, got 2" in result.stderr
    missing = tmp_path / "missing.txt"
    missing.write_text("1\ns1\t1\t2\ns1\t3\tnobody\t1\n")
    result = runner.invoke(
        app, ["eval", "--checkpoint", str(orl_checkpoint), "--pairs", str(missing), "--images", str(ORL)]
    )
    assert result.exit_code == 2 and "missing" in result.stderr and "nobody" in result.stderr
    assert "Traceback" not in result.output
    nothing = runner.invoke(app, ["eval", "--checkpoint", str(orl_checkpoint)])
    assert nothing.exit_code == 2 and "nothing to evaluate" in nothing.stderr


def test_cli_pairs_writes_a_readable_lfw_file(tmp_path):
    out = tmp_path / "orl_pairs.txt"
    result = runner.invoke(
        app, ["pairs", "--root", str(ORL), "--folds", "3", "--pairs-per-fold", "4", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines()[0] == "3\t4"
    pairs = read_pairs(out, ORL)
    assert (len(pairs.is_same), sum(pairs.is_same), sorted(set(pairs.folds))) == (24, 12, [0, 1, 2])
    again = tmp_path / "again.txt"
    runner.invoke(app, ["pairs", "--root", str(ORL), "--folds", "3", "--pairs-per-fold", "4", "--out", str(again)])
    assert again.read_text() == out.read_text()  # seeded


def test_cli_pairs_from_the_demo_config_matches_the_committed_file(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the demo config's paths are relative to the repository root
    out = tmp_path / "holdout.txt"
    result = runner.invoke(app, ["pairs", "--config", str(REPO / "configs" / "demo.yaml"), "--folds", "10",
                                 "--pairs-per-fold", "30", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.read_text() == ORL_PAIRS.read_text()
    both = runner.invoke(app, ["pairs", "--root", str(ORL), "--config", "x.yaml", "--out", str(out)])
    assert both.exit_code == 2


def eval_cli(checkpoint: Path, *args: str):
    return runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), *args])


def test_sets_that_cannot_be_scored_are_one_line_errors(orl_checkpoint, tmp_path):
    one_fold = tmp_path / "one_fold.txt"
    one_fold.write_text("1\t1\ns1\t1\t2\ns1\t1\ts2\t1\n")
    result = eval_cli(orl_checkpoint, "--pairs", str(one_fold), "--images", str(ORL))
    assert result.exit_code == 2 and "make 1 fold; k-fold accuracy needs at least 2" in result.stderr
    only_same = tmp_path / "same.txt"
    only_same.write_text("s1/1.pgm s1/2.pgm 1\ns2/1.pgm s2/2.pgm 1\n")
    result = eval_cli(orl_checkpoint, "--pairs", str(only_same), "--images", str(ORL))
    assert result.exit_code == 2 and "2 same and 0 different pairs: verification needs both kinds" in result.stderr
    result = eval_cli(orl_checkpoint, "--pairs", str(tmp_path), "--images", str(ORL))
    assert result.exit_code == 2 and "is a folder, not a file" in result.stderr


def test_output_paths_are_checked_before_embedding(orl_checkpoint, tmp_path):
    result = eval_cli(orl_checkpoint, "--pairs", str(ORL_PAIRS), "--images", str(ORL), "--json", str(tmp_path))
    assert result.exit_code == 2 and "--json:" in result.stderr and "is a folder: give a file name" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = eval_cli(orl_checkpoint, "--pairs", str(ORL_PAIRS), "--images", str(ORL), "--plot", str(blocker / "p.png"))
    assert result.exit_code == 2 and "--plot: cannot create the folder" in result.stderr
    assert "Traceback" not in result.output


def test_same_named_sets_get_distinct_names_and_plots(orl_checkpoint, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "pairs.txt").write_text(ORL_PAIRS.read_text())
    both = ["--pairs", str(tmp_path / "a" / "pairs.txt"), "--pairs", str(tmp_path / "b" / "pairs.txt")]
    result = eval_cli(orl_checkpoint, *both, "--images", str(ORL), "--plot", str(tmp_path / "p.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p_pairs.png").is_file() and (tmp_path / "p_pairs_2.png").is_file()


def test_set_applies_to_the_checkpoints_config(orl_checkpoint):
    result = eval_cli(orl_checkpoint, "--pairs", str(ORL_PAIRS), "--images", str(ORL), "--set", "eval.flip=false")
    assert result.exit_code == 0, result.output
    assert "flip fusion" not in result.stdout and "no flip" in result.stdout
    typo = eval_cli(orl_checkpoint, "--pairs", str(ORL_PAIRS), "--set", "eval.flipp=false")
    assert typo.exit_code == 2 and "did you mean 'eval.flip'" in typo.stderr


def test_unmeasurable_best_metric_is_refused_before_training(tmp_path):
    sets = [{"pairs": str(ORL_PAIRS), "images": str(ORL)}]
    cfg = tiny_config(ORL, tmp_path / "run", data={"val_identities": 10},
                      eval={"sets": sets, "best_metric": "tar@far=1e-3"})  # fmt: skip
    with pytest.raises(Exception, match=r"tar@far=1e-3 needs at least 1000 different pairs .* which has 300"):
        Trainer(cfg, progress=False).setup()


def test_altered_checkpoint_names_the_first_mismatched_weight(orl_checkpoint, tmp_path):
    from facetrain.checkpoint import load_checkpoint, save_checkpoint
    from facetrain.errors import CheckpointError

    state = load_checkpoint(orl_checkpoint)
    state["embedder"]["neck.3.weight"] = torch.zeros(7, 512)
    altered = save_checkpoint(state, tmp_path / "altered.pt")
    with pytest.raises(CheckpointError, match=r"neck\.3\.weight: \(7, 512\) vs \(32, 512\)"):
        load_model(altered, CPU)


def test_nan_embeddings_say_what_to_fix_for_the_kind_of_model():
    """A facetrain embedder (a checkpoint's, or the one in training) that returns NaN points at the run
    that diverged; a model file points at its weights and input options."""
    from facetrain.errors import DataError
    from facetrain.evaluation.embedding import check_finite
    from facetrain.models.pixels import ModuleEmbedder

    class File:  # a model file as eval --model loads one: only its name matters here
        name = "model 'foreign.onnx'"

    outputs = torch.tensor([[1.0, 0.0], [float("nan"), 0.0]])
    ours = ModuleEmbedder(torch.nn.Identity(), Preprocess(32), torch.device("cpu"), Precision(None), name="the run")
    with pytest.raises(DataError, match=r"the run returned NaN .* image 4 of this evaluation.*lower train.lr"):
        check_finite(ours, outputs, images=2, seen=2)
    with pytest.raises(DataError, match=r"model 'foreign.onnx' returned NaN .*--input-size, --mean") as raised:
        check_finite(File(), outputs, images=2, seen=0)
    assert "train.lr" not in str(raised.value)
    check_finite(ours, outputs[:1], images=1, seen=0)  # finite: nothing said
