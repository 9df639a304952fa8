"""``facetrain import --insightface`` and ``export --format insightface`` from the command line, and the
imported checkpoint in the commands that read checkpoints (eval, export, verify, embed, model.init_from;
refused by resume and outliers, which need a head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_faces
from insightface_layout import face_like_images, layout_of, random_weights, reference_forward
from typer.testing import CliRunner

from facetrain.checkpoint import save_checkpoint
from facetrain.cli import app
from facetrain.config import config_from_dict, config_to_dict
from facetrain.deploy.deployed import load_exported
from facetrain.models import load_model
from facetrain.models.embedder import build_embedder

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
runner = CliRunner()
DIM = 64  # a small embedding keeps mbf (2M weights) quick


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(arg) for arg in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(insightface weights file, the checkpoint `facetrain import` made of it, the weights)."""
    root = tmp_path_factory.mktemp("insightface")
    weights = random_weights(layout_of("mbf", DIM), seed=5)
    source = root / "backbone.pth"
    torch.save(weights, source)
    code, said = invoke("import", "--insightface", source, "--arch", "mbf", "--out", root / "mbf.pt")
    assert code == 0, said
    assert f"imported: {root / 'mbf.pt'} (mobilefacenet, insightface's mbf; {DIM}-d embeddings;" in said
    return source, root / "mbf.pt", weights


def test_the_checkpoint_holds_the_embedder_its_config_and_origin(imported):
    source, checkpoint, _ = imported
    state = torch.load(checkpoint, weights_only=True)
    assert "head" not in state and "optimizer" not in state
    assert state["origin"] == {"kind": "insightface", "file": str(source), "arch": "mobilefacenet", "name": "mbf"}
    config = state["config"]
    assert config["model"]["backbone"] == "mobilefacenet" and config["model"]["embedding_dim"] == DIM
    assert config["data"]["image_size"] == 112 and config["data"]["center_crop"] is None
    parameters = sum(value.numel() for key, value in state["embedder"].items() if "running" not in key)
    assert 1_500_000 < parameters < 2_500_000


def test_load_model_gives_the_reference_embeddings(imported):
    _, checkpoint, weights = imported
    loaded = load_model(checkpoint, torch.device("cpu"))
    assert loaded.preprocess.image_size == 112
    batch = face_like_images(2)
    with torch.no_grad():
        expected = F.normalize(reference_forward("mbf", weights, batch), dim=1)
        got = F.normalize(loaded.embedder(batch), dim=1)
    assert (got - expected).abs().max() < 1e-5


def test_export_verify_and_embed_take_it(imported, tmp_path):
    _, checkpoint, _ = imported
    faces = make_faces(tmp_path / "faces", identities=2, per_identity=1, size=(112, 112))
    first, second = sorted(faces.rglob("*.png"))
    code, said = invoke("export", "--checkpoint", checkpoint, "--out", tmp_path / "model.pt")
    assert code == 0, said
    _, metadata = load_exported(tmp_path / "model.pt")
    assert metadata.mean == (0.5, 0.5, 0.5) and metadata.std == (0.5, 0.5, 0.5)
    assert metadata.image_size == 112 and metadata.embedding_dim == DIM and metadata.backbone == "mobilefacenet"
    code, said = invoke("verify", tmp_path / "model.pt", first, second)
    assert code == 0 and "score: " in said, said
    out = tmp_path / "e.npz"
    code, said = invoke("embed", "--checkpoint", checkpoint, "--images", faces, "--out", out, "--workers", "0",
                        "--device", "cpu", "--no-progress")  # fmt: skip
    assert code == 0, said
    with np.load(out) as saved:
        assert saved["embeddings"].shape == (2, DIM)


def test_eval_takes_it(imported, tmp_path):
    _, checkpoint, _ = imported
    faces = make_faces(tmp_path / "faces", identities=4, per_identity=2, size=(112, 112))
    people = sorted(path for path in faces.iterdir())
    lines = [f"{p / 'img00.png'} {p / 'img01.png'} 1" for p in people]
    lines += [f"{a / 'img00.png'} {b / 'img00.png'} 0" for a, b in zip(people, people[1:] + people[:1], strict=True)]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    code, said = invoke("eval", "--checkpoint", checkpoint, "--pairs", pairs, "--device", "cpu", "--folds", "2",
                        "--set", "data.num_workers=0")  # fmt: skip
    assert code == 0 and "accuracy" in said, said


def test_export_insightface_writes_the_published_layout_back(imported, tmp_path):
    _, checkpoint, weights = imported
    out = tmp_path / "backbone.pth"
    code, said = invoke("export", "--format", "insightface", "--checkpoint", checkpoint, "--out", out)
    assert code == 0, said
    assert f'get_model("mbf", num_features={DIM})' in said and "max abs difference 0.0e+00" in said
    exported = torch.load(out, weights_only=True)
    assert {key: tuple(value.shape) for key, value in exported.items()} == layout_of("mbf", DIM)
    assert all(torch.equal(exported[key], weights[key]) for key in weights)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--arch", "r50"], "holds mobilefacenet weights (its conv_sep.* and layers.* keys are MobileFaceNet's), "
         "not iresnet50 (r50): use --arch mobilefacenet"),
        (["--arch", "mbf", "--embedding-dim", "512"], f"holds {DIM}-d embeddings (features.layers.2.weight has "
         f"{DIM} rows), not 512-d"),
    ],
)  # fmt: skip
def test_import_names_what_the_file_holds(imported, tmp_path, args, expected):
    source = imported[0]
    code, said = invoke("import", "--insightface", source, "--out", tmp_path / "x.pt", *args)
    assert code == 2 and expected in said and said.count("\n") == 1, said
    assert not (tmp_path / "x.pt").exists()


def test_import_replaces_a_file_only_with_overwrite(imported, tmp_path):
    source = imported[0]
    out = tmp_path / "x.pt"
    out.write_text("keep me\n")
    code, said = invoke("import", "--insightface", source, "--arch", "mbf", "--out", out)
    assert code == 2 and "exists: give another path, or --overwrite" in said and out.read_text() == "keep me\n"
    code, said = invoke("import", "--insightface", source, "--arch", "mobilefacenet", "--out", out, "--overwrite")
    assert code == 0, said
    assert torch.load(out, weights_only=True)["origin"]["name"] == "mbf"


def test_commands_that_need_a_head_refuse_it(imported, tmp_path):
    source, checkpoint, _ = imported
    code, said = invoke("train", "--resume", checkpoint, "--no-progress")
    only = f"checkpoint '{checkpoint}' holds an embedder only (imported from insightface weights '{source}')"
    assert code == 2 and only in said, said
    assert f"cannot be resumed: to train from it, start a new run with model.init_from: {checkpoint}" in said
    code, said = invoke("outliers", "--checkpoint", checkpoint, "--out", tmp_path / "o.tsv")
    assert code == 2 and only in said and "cannot be the source of an outlier report" in said, said


def test_export_insightface_refuses_a_torchvision_backbone(tmp_path):
    config = config_from_dict({"model": {"backbone": "resnet18", "embedding_dim": 8}, "data": {"image_size": 32}})
    embedder = build_embedder(config.model, 32)
    state = {"config": config_to_dict(config), "embedder": embedder.state_dict()}
    checkpoint = save_checkpoint(state, tmp_path / "r.pt")
    code, said = invoke("export", "--format", "insightface", "--checkpoint", checkpoint, "--out", tmp_path / "b.pth")
    assert code == 2 and "has a resnet18 backbone, which insightface does not build" in said, said
    assert not (tmp_path / "b.pth").exists()


def test_export_insightface_refuses_a_centre_cropped_run(tmp_path):
    """insightface's tools feed whole aligned faces: a model trained on crops would be fed the wrong input."""
    raw = {"model": {"backbone": "mobilefacenet", "embedding_dim": 8}, "data": {"image_size": 112, "center_crop": 0.9}}
    config = config_from_dict(raw)
    state = {"config": config_to_dict(config), "embedder": build_embedder(config.model, 112).state_dict()}
    checkpoint = save_checkpoint(state, tmp_path / "m.pt")
    code, said = invoke("export", "--format", "insightface", "--checkpoint", checkpoint, "--out", tmp_path / "b.pth")
    assert code == 2 and "was trained on centre-cropped images (data.center_crop 0.9)" in said, said
    assert not (tmp_path / "b.pth").exists()


def test_import_of_a_file_without_weights_is_one_line(tmp_path):
    source = tmp_path / "archive.pt"
    torch.save({"epoch": torch.tensor(3), "note": "no weights"}, source)
    code, said = invoke("import", "--insightface", source, "--arch", "r18", "--out", tmp_path / "x.pt")
    assert code == 2 and "which is not a tensor" in said and said.count("\n") == 1, said


def test_a_new_run_starts_from_it_with_init_from(imported, tmp_path):
    _, checkpoint, weights = imported
    faces = make_faces(tmp_path / "faces", identities=3, per_identity=2, size=(112, 112))
    config = tmp_path / "tune.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        f"data: {{root: {faces}, image_size: 112, num_workers: 0}}\n"
        f"model: {{backbone: mobilefacenet, embedding_dim: {DIM}, init_from: {checkpoint}}}\n"
        "train: {epochs: 1, batch_size: 6, warmup_epochs: 0, checkpoint_every_steps: 0, freeze_embedder_epochs: 1}\n"
        "eval: {sets: []}\n"
    )
    code, said = invoke("train", "--config", config, "--device", "cpu", "--no-progress")
    assert code == 0, said
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["embedder"]
    assert torch.equal(trained["neck.layers.2.weight"], weights["features.layers.2.weight"])  # frozen


def test_weights_not_yet_imported_are_named_with_their_import(imported, tmp_path):
    """insightface's backbone.pth given where a facetrain checkpoint belongs: each command names the file
    for what it is and gives the `facetrain import` line, with the architecture read from its keys."""
    source, _, _ = imported
    wanted = (
        f"'{source}' holds insightface's mbf weights (a bare state dict, no facetrain config): import them "
        f"first, facetrain import --insightface {source} --arch mobilefacenet --out "
        f"{source.with_name('backbone-mobilefacenet.pt')}"
    )
    code, said = invoke("export", "--checkpoint", source, "--out", tmp_path / "model.pt")
    assert code == 2 and wanted in said and said.count("\n") == 1, said
    faces = make_faces(tmp_path / "faces", identities=2, per_identity=2, size=(112, 112))
    config = tmp_path / "tune.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\ndata: {{root: {faces}, image_size: 112}}\n"
        f"model: {{backbone: mobilefacenet, embedding_dim: {DIM}, init_from: {source}}}\neval: {{sets: []}}\n"
    )
    code, said = invoke("train", "--config", config, "--device", "cpu", "--no-progress")
    assert code == 2 and f"model.init_from: {wanted}" in said, said
    # Weights that are no face network insightface releases: the generic line, still with the import.
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4)}, other)
    code, said = invoke("train", "--resume", other, "--no-progress")
    assert code == 2 and f"checkpoint '{other}' holds bare weights (a state dict, no facetrain config)" in said, said
    assert f"facetrain import --insightface {other} --arch ARCH" in said


def test_a_mobilefacenet_file_without_its_first_conv_says_so(imported, tmp_path):
    _, _, weights = imported
    damaged = tmp_path / "damaged.pth"
    torch.save({key: value for key, value in weights.items() if key != "layers.0.layers.0.weight"}, damaged)
    code, said = invoke("import", "--insightface", damaged, "--arch", "r50", "--out", tmp_path / "x.pt")
    incomplete = "a MobileFaceNet without its first conv (no layers.0.layers.0.weight: the file is incomplete)"
    assert code == 2 and incomplete in said, said
    assert "None" not in said
