"""`facetrain check` and the shape messages it (and train/eval/resume) give instead of matrix errors."""

import pytest
import torch
from conftest import ORL, REPO, make_faces
from typer.testing import CliRunner

from facetrain.cli import app
from facetrain.errors import ShapeError
from facetrain.models.backbones import create_torchvision
from facetrain.models.heads import ArcFace

runner = CliRunner()
DEMO = str(REPO / "configs" / "demo.yaml")
R50 = str(REPO / "configs" / "r50.yaml")  # the field's r50: iresnet50
RESNET50 = str(REPO / "configs" / "resnet50.yaml")  # torchvision's


def check(*args: str):
    return runner.invoke(app, ["check", *args])


def test_demo_config_passes_with_the_stage_table(monkeypatch):
    monkeypatch.chdir(REPO)
    result = check("--config", DEMO)
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first == "input 3×112×112 → backbone 512×4×4 → pool 512×1×1 → flatten 512 → projection 128 → head 30"
    assert "11,176,512" in result.stdout  # resnet18 without its classifier
    assert "eval.sets[0] orl_holdout: 600 pairs, 100 images, all present" in result.stdout
    assert result.stdout.strip().endswith("check passed")


def test_r50_on_any_dataset(tmp_path):
    result = check("--config", R50, "--set", f"data.root={ORL}", "--set", "train.batch_size=64")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "input 3×112×112 → backbone 512×7×7 → pool 512×7×7 → flatten 25088 → projection 512 → head 40"
    )
    result = check("--config", RESNET50, "--set", f"data.root={ORL}", "--set", "train.batch_size=64")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "input 3×112×112 → backbone 2048×4×4 → pool 2048×1×1 → flatten 2048 → projection 512 → head 40"
    )


def test_every_problem_gets_its_own_line(tmp_path):
    faces = make_faces(tmp_path / "faces", identities=3, per_identity=4)
    (faces / "id01" / "img02.png").write_bytes(b"broken")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("id00/img00.png id09/img00.png 0\n")
    result = check(
        "--config", RESNET50, "--set", f"data.root={faces}", "--set", "model.pool_size=8",
        "--set", "head.num_classes=10", "--set", f"eval.sets=[{{pairs: {pairs}, images: {faces}}}]",
        "--set", "train.batch_size=8",
    )  # fmt: skip
    assert result.exit_code == 2
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 4, result.stderr
    text = "\n".join(problems)
    assert "1 of 12 images cannot be used; the first: cannot read image" in text and "img02.png" in text
    assert "head.num_classes is 10 but data.root has 3 training identities" in text
    assert "model.pool_size=8 is larger than the 4x4 feature map of resnet50 at data.image_size=112" in text
    assert "eval.sets[0]:" in text and "missing" in text
    assert "Traceback" not in result.output


def test_image_too_small_and_wrong_weights_file(tmp_path):
    weights = tmp_path / "r18.pth"
    torch.save(create_torchvision("resnet18").state_dict(), weights)
    result = check(
        "--config", R50, "--set", f"data.root={ORL}", "--set", "model.backbone=vgg16", "--set", "data.image_size=16",
        "--set", f"model.pretrained={weights}",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "data.image_size=16 is too small for vgg16" in result.stderr
    assert "does not match backbone vgg16" in result.stderr and "features.0.weight" in result.stderr


def test_head_refuses_embeddings_of_another_size():
    head = ArcFace(embedding_dim=512, num_classes=10, s=64.0, m=0.5, easy_margin=False)
    with pytest.raises(ShapeError, match=r"class centres are \(10, 512\).*embeddings of shape \(20, 30\).*512"):
        head(torch.randn(20, 30), torch.zeros(20, dtype=torch.long))


def test_resume_with_another_embedding_dim_is_one_line(tmp_path):
    faces = make_faces(tmp_path / "faces")
    base = ["--set", f"data.root={faces}", "--set", f"run_dir={tmp_path / 'run'}", "--set", "data.image_size=32",
            "--set", "model.backbone=resnet18", "--set", "model.embedding_dim=16", "--set", "train.batch_size=8",
            "--set", "train.epochs=1", "--set", "data.num_workers=0", "--no-progress"]  # fmt: skip
    assert runner.invoke(app, ["train", "--config", R50, *base]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            R50,
            *base,
            "--set",
            "model.embedding_dim=32",
            "--resume",
            str(tmp_path / "run" / "last.pt"),
        ],
    )
    assert result.exit_code == 2
    assert "has model.embedding_dim 16, config says 32" in result.stderr
    assert "set model.embedding_dim: 16" in result.stderr and "Traceback" not in result.output


def test_check_applies_the_training_preprocessing(tmp_path):
    result = check("--config", R50, "--set", f"data.root={ORL}", "--set", "data.center_crop=200")
    assert result.exit_code == 2
    assert "400 of 400 images cannot be used; the first: data.center_crop=200 is larger than" in result.stderr


def test_unusable_output_paths_and_inputs_are_one_line(tmp_path):
    from conftest import tiny_config

    from facetrain.training.trainer import Trainer

    trainer = Trainer(tiny_config(ORL, tmp_path / "run"), progress=False)
    trainer.setup()
    checkpoint = str(trainer.save())
    model = tmp_path / "m.pt"
    assert runner.invoke(app, ["export", "--checkpoint", checkpoint, "--out", str(model)]).exit_code == 0
    image = str(ORL / "s1" / "1.pgm")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["export", "--checkpoint", checkpoint, "--out", str(tmp_path)], "--out: '"),
        (["embed", "--checkpoint", checkpoint, "--images", str(ORL), "--out", str(tmp_path)], "--out: '"),
        (["export", "--checkpoint", checkpoint, "--out", str(model), "--parity-images", str(empty)], "no images"),
        (["verify", str(model), image, image, "--threshold", "nan"], "not a finite number"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output
