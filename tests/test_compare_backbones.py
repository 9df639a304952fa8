"""The pure helpers of scripts/compare_backbones.py: per-backbone configs, the training subset, cost, the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_faces

from facetrain.config import HEAD_OPTIONS, config_from_dict
from facetrain.data.identities import split_identities

sys.path.insert(0, str(REPO / "scripts"))  # for its helpers, scripts/_compare.py
spec = importlib.util.spec_from_file_location("compare_backbones", REPO / "scripts" / "compare_backbones.py")
compare_backbones = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_backbones)


def test_every_backbone_gets_the_same_training_and_arcface_defaults(tmp_path: Path) -> None:
    args = compare_backbones.parse_args(["--out", str(tmp_path), "--images-per-identity", "12"])
    assert args.epochs == 10 and args.seeds == [0, 1] and args.image_size == 112 and args.batch_size == 32
    configs = {
        backbone: config_from_dict(compare_backbones.run_config(args, backbone, 1, tmp_path / "data"))
        for backbone in compare_backbones.BACKBONES
    }
    for backbone, config in configs.items():
        assert config.model.backbone == backbone and config.model.embedding_dim == 512
        assert config.run_dir == str(tmp_path / f"{backbone}-n12-seed1")
        assert config.train == configs["resnet18"].train and config.data == configs["resnet18"].data
        assert config.head == configs["resnet18"].head and config.eval.sets == ()
    head = configs["iresnet18"].head
    assert head.type == "arcface" and (head.s, head.m) == (HEAD_OPTIONS["arcface"]["s"], HEAD_OPTIONS["arcface"]["m"])
    assert head.margin_warmup_epochs == 4.0  # arcface's margin warm-up
    assert configs["mobilefacenet"].data.val_identities == 10 and configs["mobilefacenet"].data.image_size == 112
    full = compare_backbones.parse_args(["--out", str(tmp_path)])
    assert compare_backbones.run_config(full, "iresnet18", 0, tmp_path)["run_dir"] == str(tmp_path / "iresnet18-seed0")


def test_subset_keeps_n_images_per_training_person_and_every_held_out_image(tmp_path: Path) -> None:
    root = make_faces(tmp_path / "faces", identities=14, per_identity=6, size=(8, 8))
    subset, digest = compare_backbones.make_subset(root, tmp_path / "out", per_identity=3, seed=0)
    training, held_out = split_identities(compare_backbones.data_config(subset))
    full_training, full_held_out = split_identities(compare_backbones.data_config(root))
    assert [name for name, _ in held_out] == [name for name, _ in full_held_out] and len(held_out) == 10
    assert [name for name, _ in training] == [name for name, _ in full_training]
    assert all(len(paths) == 3 for _, paths in training) and all(len(paths) == 6 for _, paths in held_out)
    for _, paths in training:
        assert all(Path(path).resolve().parent.parent == root for path in paths)
    again = compare_backbones.make_subset(root, tmp_path / "out", per_identity=3, seed=0)
    assert again == (subset, digest)  # the same images every time: finished runs are reused
    assert compare_backbones.make_subset(root, tmp_path / "out", per_identity=3, seed=1)[1] != digest


def test_model_cost_counts_multiply_adds_and_parameters() -> None:
    cost = compare_backbones.model_cost("mobilefacenet", 112)
    assert cost["gmacs_per_image"] == pytest.approx(cost["flops_per_image"] / 2e9)
    assert 0.40 < cost["gmacs_per_image"] < 0.47  # insightface's mbf: 0.45 "GFLOPs" (multiply-adds)
    assert 1.9e6 < cost["parameters"] < 2.2e6


def run(seed: int, accuracy: float, tar: float | None, seconds: list[float]) -> dict:
    return {
        "backbone": "iresnet18", "seed": seed, "parameters": 24_025_600, "gmacs_per_image": 2.61,
        "flops_per_image": 5.22e9, "accuracy": accuracy, "accuracy_std": 0.02, "tar@far=1e-2": tar, "roc_auc": 0.9,
        "images_per_epoch": 100, "peak_rss_mb": 10.0, "eval_seconds": 30.0, "epochs": [{"seconds": s} for s in seconds],
    }  # fmt: skip


def test_summary_table_and_full_protocol_estimate(tmp_path: Path) -> None:
    runs = [run(0, 0.90, 0.5, [9.0, 5.0]), run(1, 0.80, 0.3, [4.0])]
    row = compare_backbones.summarise(runs)
    assert row["accuracy"] == pytest.approx(0.85) and row["median_epoch_seconds"] == 5.0
    table = compare_backbones.markdown_table({"iresnet18": row}, "cpu")
    assert (
        "| iresnet18 | 85.00 ± 2.00 | 90.00, 80.00 | 40.00 | 50.00, 30.00 | 0.9000 | 5.0 | 20.0 | 24.03 | 2.610 | 0 1 |"
        in table
    )
    args = compare_backbones.parse_args(["--out", str(tmp_path)])
    estimate = compare_backbones.full_protocol_estimate({"iresnet18": row}, {"iresnet18": runs}, 1000, args)
    # 992 images an epoch at 20 img/s, 10 epochs, plus a 30 s evaluation, for 2 seeds
    assert estimate["training_images_per_epoch"] == 992 and estimate["total_seconds"] == (992 / 20 * 10 + 30) * 2
