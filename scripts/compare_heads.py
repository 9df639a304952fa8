"""Compares the margin heads on a real face set: the README's head comparison table.

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

Usage (from the repository root), the README table:
  .venv/bin/python scripts/compare_heads.py --epochs 10 --seeds 0 1
A quick check:
  .venv/bin/python scripts/compare_heads.py --epochs 1 --heads arcface softmax --seeds 0 --image-size 32
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from facetrain.config import HEAD_OPTIONS, HEAD_TYPES, Config, DataConfig, config_from_dict, config_to_dict
from facetrain.data.identities import split_identities
from facetrain.evaluation.evaluate import run_eval
from facetrain.evaluation.pairgen import make_pairs, write_lfw_pairs
from facetrain.evaluation.pairs import read_pairs
from facetrain.runtime import resolve_device
from facetrain.training.trainer import Trainer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yaleb"
HELD_OUT, SPLIT_SEED, FOLDS = 10, 0, 10
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
    return {
        "run_dir": str(Path(args.out) / f"{head}-seed{seed}"),
        "seed": seed,
        "data": {
            "root": str(args.data), "val_identities": HELD_OUT, "split_seed": SPLIT_SEED,
            "min_images_per_identity": 2, "image_size": args.image_size, "center_crop": None, "hflip": True,
            "num_workers": 1,
        },
        "model": {"backbone": "resnet18", "embedding_dim": 128, "pool_size": 1, "dropout": 0.0},
        "head": head_section,
        "train": {
            "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
            "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1, "grad_clip": 5.0, "amp": "auto",
            "device": args.device, "checkpoint_every_steps": 0, "log_every_steps": 10,
        },
        "eval": {"sets": [], "folds": FOLDS, "flip": True, "batch_size": 64},
    }  # fmt: skip


def write_holdout_pairs(data: DataConfig, out: Path, per_fold: int, seed: int) -> tuple[Path, Path, str]:
    """Links the held-out images as ``<name>/<k><ext>`` and writes an LFW pairs file over them.

    Returns:
        The pairs file, the image root it refers to, and a digest of both (pairs and link targets).
    """
    _, held_out = split_identities(data)
    image_root = out / "holdout_images"
    shutil.rmtree(image_root, ignore_errors=True)
    numbered, digest = [], hashlib.sha256()
    for name, paths in held_out:
        (image_root / name).mkdir(parents=True)
        links = [image_root / name / f"{k}{path.suffix}" for k, path in enumerate(paths, 1)]
        for link, path in zip(links, paths, strict=True):
            link.symlink_to(path.resolve())
            digest.update(f"{link.relative_to(image_root)} {path.name}\n".encode())
        numbered.append((name, links))
    pairs_file = out / "holdout_pairs.txt"
    write_lfw_pairs(pairs_file, make_pairs(numbered, FOLDS, per_fold, seed), FOLDS, per_fold)
    digest.update(pairs_file.read_bytes())
    return pairs_file, image_root, digest.hexdigest()


def train_and_evaluate(config: Config, pairs_file: Path, image_root: Path, label: str) -> dict[str, Any]:
    """Trains one run, timing each epoch, then scores its last.pt on the held-out pairs."""
    trainer = Trainer(config, overwrite=True, progress=False)
    trainer.setup()
    epochs = []
    try:
        while trainer.epoch < config.train.epochs:
            started = time.perf_counter()
            stats = trainer.train_epoch()
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            stats["seconds"] = time.perf_counter() - started
            epochs.append(stats)
            print(
                f"{label}: epoch {trainer.epoch}/{config.train.epochs}  loss {stats['loss']:.3f}  "
                f"train acc {stats['accuracy']:.3f}  {stats['seconds']:.1f} s",
                flush=True,
            )
    finally:
        trainer.tensorboard.close()
    checkpoint = trainer.save()
    [report] = run_eval(checkpoint, [read_pairs(pairs_file, image_root, "lfw")], device=trainer.device)
    metrics = report.headline
    median = statistics.median(epoch["seconds"] for epoch in epochs)
    images = trainer.micro_batches * config.train.batch_size  # drop_last: images seen per epoch
    return {
        "epochs": epochs,
        "median_epoch_seconds": median,
        "images_per_epoch": images,
        "images_per_sec": images / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # so far in this process
        "accuracy": metrics.accuracy,
        "accuracy_std": metrics.accuracy_std,
        "tar@far=1e-2": metrics.tar_at_far["1e-2"],
        "roc_auc": metrics.roc_auc,
        "report": report.to_dict(),
    }


def readings(result: dict[str, Any]) -> str:
    tar = result["tar@far=1e-2"]
    return (
        f"accuracy {result['accuracy']:.4f} ± {result['accuracy_std']:.4f}, TAR@FAR=1e-2 "
        f"{'n/a' if tar is None else f'{tar:.4f}'}, ROC AUC {result['roc_auc']:.4f}, "
        f"median epoch {result['median_epoch_seconds']:.1f} s"
    )


def options_text(options: dict[str, Any]) -> str:
    """``s=32, m=0.5, easy_margin=False``; a dash for a head without options."""
    shown = [f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}" for name, value in options.items()]
    return ", ".join(shown) or "—"


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One head's runs -> means over seeds, per-seed values and the median epoch over all epochs."""
    tars = [run["tar@far=1e-2"] for run in runs]
    median = statistics.median(epoch["seconds"] for run in runs for epoch in run["epochs"])
    return {
        "options": runs[0]["options"],
        "seeds": [run["seed"] for run in runs],
        "accuracy": statistics.mean(run["accuracy"] for run in runs),
        "accuracy_std": statistics.mean(run["accuracy_std"] for run in runs),
        "accuracy_per_seed": [run["accuracy"] for run in runs],
        "tar@far=1e-2": statistics.mean(tars) if None not in tars else None,
        "tar@far=1e-2_per_seed": tars,
        "roc_auc": statistics.mean(run["roc_auc"] for run in runs),
        "median_epoch_seconds": median,
        "images_per_sec": runs[0]["images_per_epoch"] / median,
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
    }


def markdown_table(heads: dict[str, dict[str, Any]], device: str) -> str:
    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}"

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


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="one folder of images per identity")
    parser.add_argument("--heads", nargs="+", choices=HEAD_TYPES, default=list(HEAD_TYPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--scale", type=float, default=32.0, help="s of every head that takes one")
    parser.add_argument(
        "--option",
        action="append",
        metavar="HEAD.KEY=VALUE",
        help="a head option other than its default, e.g. arcface.m=0.3 (repeatable; replaces the defaults "
        "given here: combined.m2=0.3 combined.m3=0.2, the ArcFace paper's combined setting CM1)",
    )
    parser.add_argument("--pairs-per-fold", type=int, default=300, help="same (and different) pairs per fold")
    parser.add_argument("--pairs-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/compare_heads"), help="runs and the pairs file")
    parser.add_argument("--json", type=Path, default=None, help="the table as JSON (default: <out>/compare_heads.json)")
    parser.add_argument("--force", action="store_true", help="redo runs that have a result already")
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


def run_or_reuse(config: Config, settings: dict[str, Any], pairs: tuple[Path, Path], force: bool, label: str) -> dict:
    """The run's result.json when it holds the same settings (and not ``force``), else a fresh run."""
    result_file = Path(config.run_dir) / "result.json"
    stored = json.loads(result_file.read_text()) if result_file.is_file() else None
    if not force and stored is not None and stored.get("settings") == settings:
        print(f"{label}: done already ({result_file}), skipped")
        return stored
    options = {name: getattr(config.head, name) for name in HEAD_OPTIONS[config.head.type]}
    result = {"head": config.head.type, "seed": config.seed, "options": options, "settings": settings}
    result |= train_and_evaluate(config, *pairs, label)
    write_json(result_file, result)
    return result


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
        result = run_or_reuse(config, settings, (pairs_file, image_root), args.force, label)
        print(f"{label}: {readings(result)}", flush=True)
        runs[head].append(result)

    device = resolve_device(args.device)
    heads = {head: summarise(head_runs) for head, head_runs in runs.items()}
    table = markdown_table(heads, device.type)
    print("\n" + table)
    pairs = {key: result["report"][key] for key in ("source", "pairs", "same", "different", "unique_images", "folds")}
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    environment = {
        "torch": torch.__version__, "device": str(device), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "processor": processor or platform.machine(),
    }  # fmt: skip
    settings |= {"held_out_identities": HELD_OUT, "split_seed": SPLIT_SEED, "folds": FOLDS}
    all_runs = [run for head_runs in runs.values() for run in head_runs]
    write_json(
        args.json,
        {"settings": settings, "config_template": config_to_dict(template), "pairs": pairs,
         "environment": environment, "heads": heads, "runs": all_runs, "table": table},
    )  # fmt: skip
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
