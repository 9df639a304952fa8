"""The pure helpers of scripts/compare_heads.py: per-head configs, held-out pairs, the summary table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_faces

from facetrain.config import HEAD_OPTIONS, HEAD_TYPES, DataConfig, config_from_dict
from facetrain.evaluation.pairs import read_pairs

sys.path.insert(0, str(REPO / "scripts"))  # for its helpers, scripts/_compare.py
spec = importlib.util.spec_from_file_location("compare_heads", REPO / "scripts" / "compare_heads.py")
compare_heads = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_heads)


def test_every_head_gets_the_same_training_and_the_shared_scale(tmp_path: Path) -> None:
    args = compare_heads.parse_args(["--out", str(tmp_path), "--scale", "16", "--epochs", "3"])
    configs = {head: config_from_dict(compare_heads.run_config(args, head, seed=1)) for head in HEAD_TYPES}
    for head, config in configs.items():
        assert config.head.type == head
        assert config.run_dir == str(tmp_path / f"{head}-seed1")
        assert config.eval.sets == ()  # nothing is evaluated (or selected) during training
        assert config.train == configs["arcface"].train and config.model == configs["arcface"].model
        assert config.data == configs["arcface"].data
        assert config.head.s == (16.0 if "s" in HEAD_OPTIONS[head] else None)
        margins = {name: value for name, value in HEAD_OPTIONS[head].items() if name != "s"}
        if head == "combined":  # the ArcFace paper's CM1, not combined's own default (which is ArcFace)
            margins |= {"m2": 0.3, "m3": 0.2}
        assert {name: getattr(config.head, name) for name in margins} == margins  # the heads' defaults
    assert configs["softmax"].train.epochs == 3 and configs["softmax"].data.val_identities == 10


def test_option_overrides_one_head_only(tmp_path: Path) -> None:
    args = compare_heads.parse_args(["--out", str(tmp_path), "--option", "arcface.m=0.3"])
    assert config_from_dict(compare_heads.run_config(args, "arcface", seed=0)).head.m == 0.3
    assert config_from_dict(compare_heads.run_config(args, "curricularface", seed=0)).head.m == 0.5
    combined = config_from_dict(compare_heads.run_config(args, "combined", seed=0)).head
    assert (combined.m1, combined.m2, combined.m3) == (1.0, 0.5, 0.0)  # --option replaces the CM1 default
    with pytest.raises(SystemExit):
        compare_heads.parse_args(["--option", "arcfce.m=0.3"])


def test_holdout_pairs_name_only_held_out_images(tmp_path: Path) -> None:
    # make_faces names files img00.png, which an LFW line cannot name: the script links them as 1.png, ...
    root = make_faces(tmp_path / "faces", identities=6, per_identity=6)
    data = DataConfig(root=str(root), val_identities=3, split_seed=0)
    pairs_file, image_root, digest = compare_heads.write_holdout_pairs(data, tmp_path / "out", per_fold=3, seed=0)
    pairs = read_pairs(pairs_file, image_root, "lfw")
    assert len(pairs) == 10 * 2 * 3 and sum(pairs.is_same) == 10 * 3
    assert sorted(set(pairs.folds)) == list(range(10))
    held_out = {path.parent.name for path in pairs.images}
    assert len(held_out) == 3
    for image in pairs.images:
        target = Path(image).resolve()
        assert target.parent == root / target.parent.name and target.name.startswith("img")
    again = compare_heads.write_holdout_pairs(data, tmp_path / "out", per_fold=3, seed=0)
    assert again[2] == digest  # same seed: same pairs, so finished runs are reused
    assert compare_heads.write_holdout_pairs(data, tmp_path / "out", per_fold=3, seed=1)[2] != digest


def run(head: str, seed: int, accuracy: float, tar: float | None, seconds: list[float]) -> dict:
    return {
        "head": head, "seed": seed, "options": {"s": 32.0, "m": 0.5}, "accuracy": accuracy, "accuracy_std": 0.02,
        "tar@far=1e-2": tar, "roc_auc": 0.9, "images_per_epoch": 100, "peak_rss_mb": 10.0,
        "epochs": [{"seconds": s} for s in seconds],
    }  # fmt: skip


def test_summary_averages_seeds_and_lists_them() -> None:
    row = compare_heads.summarise([run("arcface", 0, 0.90, 0.5, [9.0, 5.0]), run("arcface", 1, 0.80, 0.3, [4.0])])
    assert row["accuracy"] == pytest.approx(0.85) and row["accuracy_per_seed"] == [0.90, 0.80]
    assert row["tar@far=1e-2"] == pytest.approx(0.4) and row["seeds"] == [0, 1]
    assert row["median_epoch_seconds"] == 5.0 and row["images_per_sec"] == 20.0
    table = compare_heads.markdown_table({"arcface": row}, "cpu")
    assert (
        "| arcface | s=32, m=0.5 | 85.00 ± 2.00 | 90.00, 80.00 | 40.00 | 50.00, 30.00 | 0.9000 | 5.0 | 20 | 0 1 |"
        in table
    )
    unmeasured = compare_heads.summarise([run("softmax", 0, 0.7, None, [1.0])])
    assert unmeasured["tar@far=1e-2"] is None and "n/a" in compare_heads.markdown_table({"softmax": unmeasured}, "cpu")
    assert compare_heads.options_text({}) == "—"
