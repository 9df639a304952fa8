"""Compares the margin heads on a real face set: the head comparison table of docs/training.md.

Protocol:
  - Data: ``--data`` (default ../shared/data/yaleb: Extended Yale B, 38 people x ~64 grey 168x192 images).
    10 identities are held out (data.val_identities=10, data.split_seed=0); the other 28 train.
  - Pairs: one LFW-layout file of 10 folds x (300 same + 300 different) pairs over the held-out people only,
    drawn once by facetrain's own generator (pairgen.make_pairs, ``--pairs-seed``) into ``--out`` and reused
    by every run. YaleB's files are named by pose and light, which an LFW line cannot name, so the held-out
    images are linked as ``<out>/holdout_images/<name>/<k>.pgm`` (k: position in sorted order).
  - Training, the same for every head: resnet18, 128-d embedding, ``--image-size`` 64 (the 168x192 images
    are resized to a square, no crop), batch 32, SGD lr 0.05 momentum 0.9, weight decay 5e-4, cosine decay
    after 1 warm-up epoch, ``--epochs``, seeds ``--seeds``, one loader worker, ``--device`` cpu. Every head
    keeps its default margins (facetrain.config.HEAD_OPTIONS) and margin warm-up
    (head.margin_warmup_epochs) except the scale, ``--scale`` for each head that takes s (softmax takes
    none), and ``--option`` values (default: combined as the ArcFace paper's CM1, m2=0.3 m3=0.2). No
    evaluation during training, so nothing is selected on the test pairs.
  - Evaluation: last.pt after the last epoch, scored by facetrain.evaluation.evaluate.run_eval (what ``facetrain eval``
    runs; flip fusion on): 10-fold accuracy (mean and std over folds), TAR@FAR=1e-2 and ROC AUC.
  - Timing: wall clock of each Trainer.train_epoch (no evaluation, no checkpoint writes; torch's default
    thread count); the table gives the median epoch per head and the training images per second.

Each run writes ``<out>/<head>-seed<N>/result.json``; a run whose result.json holds the same settings is
skipped, so an interrupted comparison continues where it stopped (``--force`` redoes it).

Usage (from the repository root), the table in docs/training.md:
  .venv/bin/python scripts/compare_heads.py --epochs 10 --seeds 0 1
A quick check:
  .venv/bin/python scripts/compare_heads.py --epochs 1 --heads arcface softmax --seeds 0 --image-size 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import _compare  # scripts/ is on sys.path when this file runs as a script
import yaml
from _compare import (
    FOLDS,
    HELD_OUT,
    SPLIT_SEED,
    environment,
    percent,
    readings,
    run_or_reuse,
    summarise_seeds,
    write_holdout_pairs,
    write_json,
)

from facetrain.config import HEAD_OPTIONS, HEAD_TYPES, config_from_dict, config_to_dict
from facetrain.runtime import resolve_device

# combined's own default (1, 0.5, 0) is ArcFace exactly, which would repeat the arcface row; the table
# uses the ArcFace paper's combined setting CM1 (m1, m2, m3) = (1, 0.3, 0.2) instead.
DEFAULT_OPTIONS = ("combined.m2=0.3", "combined.m3=0.2")


def run_config(args: argparse.Namespace, head: str, seed: int) -> dict[str, Any]:
    """The raw config of one run; only ``head`` and ``seed`` differ between runs."""
    head_section: dict[str, Any] = {"type": head}
    if "s" in HEAD_OPTIONS[head]:
        head_section["s"] = args.scale
    for text in args.option:
        key, _, value = text.partition("=")
        kind, _, name = key.partition(".")
        if kind == head:
            head_section[name] = yaml.safe_load(value)
    model = {"backbone": "resnet18", "embedding_dim": 128, "pool_size": 1, "dropout": 0.0}
    return _compare.run_config(args, Path(args.out) / f"{head}-seed{seed}", seed, args.data, model, head_section)


def options_text(options: dict[str, Any]) -> str:
    """``s=32, m=0.5, easy_margin=False``; a dash for a head without options."""
    shown = [f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}" for name, value in options.items()]
    return ", ".join(shown) or "—"


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One head's runs -> means over seeds, per-seed values and the median epoch over all epochs."""
    return {"options": runs[0]["options"]} | summarise_seeds(runs)


def markdown_table(heads: dict[str, dict[str, Any]], device: str) -> str:
    lines = [
        f"| head | options | accuracy % (± std over folds) | per seed | TAR@FAR=1e-2 % | per seed | ROC AUC "
        f"| epoch s ({device}, median) | img/s | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for head, row in heads.items():
        lines.append(
            f"| {head} | {options_text(row['options'])} "
            f"| {percent(row['accuracy'])} ± {percent(row['accuracy_std'])} "
            f"| {', '.join(map(percent, row['accuracy_per_seed']))} | {percent(row['tar@far=1e-2'])} "
            f"| {', '.join(map(percent, row['tar@far=1e-2_per_seed']))} | {row['roc_auc']:.4f} "
            f"| {row['median_epoch_seconds']:.1f} | {row['images_per_sec']:.0f} "
            f"| {' '.join(map(str, row['seeds']))} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _compare.add_arguments(parser, image_size=64, out=Path("runs/compare_heads"))
    parser.add_argument("--heads", nargs="+", choices=HEAD_TYPES, default=list(HEAD_TYPES))
    parser.add_argument("--scale", type=float, default=32.0, help="s of every head that takes one")
    parser.add_argument(
        "--option",
        action="append",
        metavar="HEAD.KEY=VALUE",
        help="a head option other than its default, e.g. arcface.m=0.3 (repeatable; replaces the defaults "
        "given here: combined.m2=0.3 combined.m3=0.2, the ArcFace paper's combined setting CM1)",
    )
    args = parser.parse_args(argv)
    if args.option is None:
        args.option = list(DEFAULT_OPTIONS)
    if args.json is None:
        args.json = args.out / "compare_heads.json"
    for text in args.option:
        kind = text.partition(".")[0]
        if kind not in HEAD_TYPES or "=" not in text:
            parser.error(f"--option {text}: expected HEAD.KEY=VALUE with HEAD one of {', '.join(HEAD_TYPES)}")
    return args


def main() -> None:
    args = parse_args()
    template = config_from_dict(run_config(args, args.heads[0], args.seeds[0]))
    pairs_file, image_root, digest = write_holdout_pairs(template.data, args.out, args.pairs_per_fold, args.pairs_seed)
    print(f"pairs: {pairs_file} ({FOLDS} folds x {args.pairs_per_fold} same + {args.pairs_per_fold} different)")
    runs: dict[str, list[dict[str, Any]]] = {head: [] for head in args.heads}
    plan = [(head, seed) for seed in args.seeds for head in args.heads]  # seed-major: whole tables come first
    for index, (head, seed) in enumerate(plan, 1):
        config = config_from_dict(run_config(args, head, seed), source=f"{head} seed {seed}")
        settings = json.loads(json.dumps({"config": config_to_dict(config), "pairs_sha256": digest}))
        label = f"[{index}/{len(plan)}] {head} seed {seed}"
        options = {name: getattr(config.head, name) for name in HEAD_OPTIONS[head]}
        about = {"head": head, "options": options}
        result = run_or_reuse(config, settings, (pairs_file, image_root), args.force, label, about)
        print(f"{label}: {readings(result)}", flush=True)
        runs[head].append(result)

    device = resolve_device(args.device)
    heads = {head: summarise(head_runs) for head, head_runs in runs.items()}
    table = markdown_table(heads, device.type)
    print("\n" + table)
    pairs = {key: result["report"][key] for key in ("source", "pairs", "same", "different", "unique_images", "folds")}
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    settings |= {"held_out_identities": HELD_OUT, "split_seed": SPLIT_SEED, "folds": FOLDS}
    all_runs = [run for head_runs in runs.values() for run in head_runs]
    write_json(
        args.json,
        {"settings": settings, "config_template": config_to_dict(template), "pairs": pairs,
         "environment": environment(device), "heads": heads, "runs": all_runs, "table": table},
    )  # fmt: skip
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
