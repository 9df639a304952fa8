"""What the comparison scripts (compare_heads.py, compare_backbones.py) share: the held-out pairs on
Extended Yale B, one timed training run scored on them, resumable per-run results, the summary over seeds.

Import it as ``_compare`` with scripts/ on sys.path (as it is when one of those scripts runs).
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

from facetrain.config import Config, DataConfig
from facetrain.data.identities import split_identities
from facetrain.evaluation.evaluate import run_eval
from facetrain.evaluation.pairgen import make_pairs, write_lfw_pairs
from facetrain.evaluation.pairs import read_pairs
from facetrain.training.trainer import Trainer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yaleb"
HELD_OUT, SPLIT_SEED, FOLDS = 10, 0, 10


def run_config(
    args: argparse.Namespace, run_dir: Path, seed: int, root: Path, model: dict[str, Any], head: dict[str, Any]
) -> dict[str, Any]:
    """The raw config of one run: what every comparison keeps the same, and its ``model`` and ``head`` sections."""
    return {
        "run_dir": str(run_dir),
        "seed": seed,
        "data": {
            "root": str(root), "val_identities": HELD_OUT, "split_seed": SPLIT_SEED,
            "min_images_per_identity": 2, "image_size": args.image_size, "center_crop": None, "hflip": True,
            "num_workers": 1,
        },
        "model": model,
        "head": head,
        "train": {
            "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
            "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1, "grad_clip": 5.0, "amp": "auto",
            "device": args.device, "checkpoint_every_steps": 0, "log_every_steps": 10,
        },
        "eval": {"sets": [], "folds": FOLDS, "flip": True, "batch_size": 64},
    }  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser, image_size: int, out: Path) -> None:
    """The options every comparison takes: data, seeds, training length and size, pairs, device, output."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="one folder of images per identity")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=image_size)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs-per-fold", type=int, default=300, help="same (and different) pairs per fold")
    parser.add_argument("--pairs-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=out, help="runs and the pairs file")
    parser.add_argument("--json", type=Path, default=None, help=f"the table as JSON (default: <out>/{out.name}.json)")
    parser.add_argument("--force", action="store_true", help="redo runs that have a result already")


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
    started = time.perf_counter()
    [report] = run_eval(checkpoint, [read_pairs(pairs_file, image_root, "lfw")], device=trainer.device)
    eval_seconds = time.perf_counter() - started
    metrics = report.headline
    median = statistics.median(epoch["seconds"] for epoch in epochs)
    images = trainer.micro_batches * config.train.batch_size  # drop_last: images seen per epoch
    return {
        "epochs": epochs,
        "median_epoch_seconds": median,
        "images_per_epoch": images,
        "images_per_sec": images / median,
        "eval_seconds": eval_seconds,
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


def summarise_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row's runs -> means over seeds, per-seed values and the median epoch over all epochs."""
    tars = [run["tar@far=1e-2"] for run in runs]
    median = statistics.median(epoch["seconds"] for run in runs for epoch in run["epochs"])
    return {
        "seeds": [run["seed"] for run in runs],
        "accuracy": statistics.mean(run["accuracy"] for run in runs),
        "accuracy_std": statistics.mean(run["accuracy_std"] for run in runs),
        "accuracy_per_seed": [run["accuracy"] for run in runs],
        "tar@far=1e-2": statistics.mean(tars) if None not in tars else None,
        "tar@far=1e-2_per_seed": tars,
        "roc_auc": statistics.mean(run["roc_auc"] for run in runs),
        "roc_auc_per_seed": [run["roc_auc"] for run in runs],
        "median_epoch_seconds": median,
        "images_per_sec": runs[0]["images_per_epoch"] / median,
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
    }


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def run_or_reuse(
    config: Config, settings: dict[str, Any], pairs: tuple[Path, Path], force: bool, label: str, about: dict[str, Any]
) -> dict[str, Any]:
    """The run's result.json when it holds the same settings (and not ``force``), else a fresh run.

    ``about``: what the result names the run by besides its seed (its head and options, its backbone ...).
    """
    result_file = Path(config.run_dir) / "result.json"
    stored = json.loads(result_file.read_text()) if result_file.is_file() else None
    if not force and stored is not None and stored.get("settings") == settings:
        print(f"{label}: done already ({result_file}), skipped")
        return stored
    result = about | {"seed": config.seed, "settings": settings}
    result |= train_and_evaluate(config, *pairs, label)
    write_json(result_file, result)
    return result


def environment(device: torch.device) -> dict[str, Any]:
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "torch": torch.__version__, "device": str(device), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "processor": processor or platform.machine(),
    }  # fmt: skip
