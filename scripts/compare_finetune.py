"""Fine-tuning against training from scratch: the "Start from a trained model" table of docs/backbones.md.

Protocol:
  - Source model: resnet18, 128-d, 112 px, ArcFace (s=32, the other options and the margin warm-up at
    their defaults), trained ``--base-epochs`` on the 28 training people of Extended Yale B (``--data``;
    10 held out with split seed 0, as in compare_heads.py), batch 32, SGD lr 0.05, cosine, seed 0. Its
    last.pt is scored on Yale B's own held-out pairs too.
  - Target: the demo's task (configs/demo.yaml): ORL's 30 training people, the same 10 held out, scored
    on the demo's pairs (facetrain/assets/orl_holdout_pairs.txt, 10 folds of 30 + 30 pairs) with flip
    fusion. Every run takes the demo's settings, with ``train.epochs`` E and ``train.warmup_epochs``
    min(1, E / 10); no evaluation during training (nothing is selected on the test pairs); last.pt is scored.
  - Arms, each at E = ``--epochs`` (1, 3, 10) and each seed in ``--seeds``:
      scratch:   random weights (the demo itself at E = 10);
      finetune:  model.init_from = the source's last.pt, head.init = imprint;
      gentle:    as finetune, plus train.embedder_lr_scale = 0.1 and train.freeze_embedder_epochs = 1
                 (0 at E = 1, where it would leave only the head to train).
    The source embedder as it is (no training on ORL) is scored too, as the fine-tunes' starting point.

Each run writes ``<out>/<name>/result.json``, and a run whose result.json holds the same settings is
skipped, so an interrupted comparison continues where it stopped (``--force`` redoes it).

Usage (from the repository root), the table in docs/backbones.md:
  .venv/bin/python scripts/compare_finetune.py
A quick check:
  .venv/bin/python scripts/compare_finetune.py --base-epochs 1 --epochs 1 --seeds 0 --image-size 32
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import _compare  # scripts/ is on sys.path when this file runs as a script
import torch
import yaml

from facetrain.config import config_from_dict, config_to_dict
from facetrain.evaluation.evaluate import run_eval
from facetrain.evaluation.pairs import read_pairs
from facetrain.runtime import resolve_device

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
ORL_PAIRS, ORL_IMAGES = REPO / "facetrain" / "assets" / "orl_holdout_pairs.txt", REPO / "facetrain" / "assets" / "orl"
ARMS = ("scratch", "finetune", "gentle")


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The source model's run on Yale B: the demo's model and head, the comparisons' training settings."""
    demo = yaml.safe_load(DEMO.read_text())
    raw = _compare.run_config(args, args.out / "source", 0, args.data, demo["model"], demo["head"])
    raw["train"]["epochs"] = args.base_epochs
    return raw


def target_config(args: argparse.Namespace, arm: str, epochs: int, seed: int, source: Path) -> dict[str, Any]:
    """One run on the demo's task; only the arm, the epochs and the seed differ between runs."""
    raw = yaml.safe_load(DEMO.read_text())
    raw["run_dir"] = str(args.out / f"{arm}-e{epochs}-seed{seed}")
    raw["seed"] = seed
    raw["data"] |= {"root": str(ORL_IMAGES), "image_size": args.image_size}
    raw["train"] |= {"epochs": epochs, "warmup_epochs": min(1.0, epochs / 10), "device": args.device}
    raw["eval"]["sets"] = []
    if arm != "scratch":
        raw["model"]["init_from"] = str(source)
        raw["head"]["init"] = "imprint"
    if arm == "gentle":
        raw["train"] |= {"embedder_lr_scale": 0.1, "freeze_embedder_epochs": 1 if epochs > 1 else 0}
    return raw


def score(checkpoint: Path, device: torch.device) -> dict[str, Any]:
    """The demo's held-out pairs, scored as ``facetrain eval`` does."""
    [report] = run_eval(checkpoint, [read_pairs(ORL_PAIRS, ORL_IMAGES, "lfw")], device=device)
    metrics = report.headline
    return {
        "accuracy": metrics.accuracy, "accuracy_std": metrics.accuracy_std,
        "tar@far=1e-2": metrics.tar_at_far["1e-2"], "roc_auc": metrics.roc_auc,
    }  # fmt: skip


def run(args: argparse.Namespace, raw: dict[str, Any], label: str, pairs: tuple[Path, Path]) -> dict[str, Any]:
    config = config_from_dict(raw, source=label)
    settings = json.loads(json.dumps({"config": config_to_dict(config)}))
    result = _compare.run_or_reuse(config, settings, pairs, args.force, label, {"label": label})
    print(f"{label}: {_compare.readings(result)}", flush=True)
    return result


def mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs]
    return None if None in values else statistics.mean(values)


def markdown_table(rows: dict[str, dict[int, list[dict[str, Any]]]], epochs: list[int]) -> str:
    header = " | ".join(f"{e} epoch{'s' * (e > 1)}: accuracy % (TAR@FAR=1e-2 %)" for e in epochs)
    lines = [f"| arm | {header} |", "|---|" + "---|" * len(epochs)]
    for arm, by_epochs in rows.items():
        cells = [
            f"{_compare.percent(mean(runs, 'accuracy'))} ({_compare.percent(mean(runs, 'tar@far=1e-2'))})"
            for runs in (by_epochs[e] for e in epochs)
        ]
        lines.append(f"| {arm} | {' | '.join(cells)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _compare.add_arguments(parser, image_size=112, out=Path("runs/compare_finetune"))
    parser.set_defaults(epochs=None)
    parser.add_argument("--base-epochs", type=int, default=10, help="epochs of the source model on Yale B")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    args = parser.parse_args(argv)
    args.epoch_list = [1, 3, 10] if args.epochs is None else [args.epochs]
    args.epochs = args.base_epochs  # what _compare.run_config reads
    if args.json is None:
        args.json = args.out / "compare_finetune.json"
    return args


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    base_raw = base_config(args)
    base = config_from_dict(base_raw, source="source")
    yale = _compare.write_holdout_pairs(base.data, args.out, args.pairs_per_fold, args.pairs_seed)
    source = run(args, base_raw, "source (Yale B)", yale[:2])
    source_checkpoint = Path(base.run_dir) / "last.pt"
    orl = (ORL_PAIRS, ORL_IMAGES)
    start = score(source_checkpoint, device)
    readings = _compare.readings(start | {"median_epoch_seconds": 0.0})
    print(f"source embedder on the ORL pairs, before any training there: {readings}")
    rows: dict[str, dict[int, list[dict[str, Any]]]] = {arm: {e: [] for e in args.epoch_list} for arm in args.arms}
    for seed in args.seeds:
        for epochs in args.epoch_list:
            for arm in args.arms:
                raw = target_config(args, arm, epochs, seed, source_checkpoint)
                rows[arm][epochs].append(run(args, raw, f"{arm} {epochs} epochs seed {seed}", orl))
    table = markdown_table(rows, args.epoch_list)
    print("\n" + table)
    goal = None
    if {"scratch", "finetune"} <= set(rows) and {3, 10} <= set(args.epoch_list):
        tuned, scratch = mean(rows["finetune"][3], "accuracy"), mean(rows["scratch"][10], "accuracy")
        goal = None if tuned is None or scratch is None else tuned > scratch
        print(f"\nfine-tune at 3 epochs beats scratch at 10: {goal}")
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    _compare.write_json(
        args.json,
        {"settings": settings, "environment": _compare.environment(device), "source": source,
         "source_on_orl": start, "runs": rows, "table": table, "finetune3_beats_scratch10": goal},
    )  # fmt: skip
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
