"""The epochs mode of ``bench_data.py``: whole epochs of real training with and without ``data.cache``.

Each run is a separate process (``bench_data.py --train ROOT --mode none|ram``), so that its peak
memory is its own. In a run: setup (which builds the caches), a verification before training, then
per epoch the training part and the verification, each timed on its own; then the steps of one epoch
again over batches collected in memory beforehand: the steps' compute alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from facetrain.config import config_from_dict
from facetrain.data import TrainImages, find_images, model_input
from facetrain.evaluation import embed_loader
from facetrain.training.monitor import Monitor
from facetrain.training.trainer import Trainer


def timed(owner: type, name: str, seconds: dict[str, float]) -> None:
    """Wraps ``owner.name`` so that the time spent in it adds up in ``seconds[owner.__name__]``."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds[owner.__name__] = seconds.get(owner.__name__, 0.0) + time.perf_counter() - started

    setattr(owner, name, wrapper)


def epochs_in_this_process(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    run_dir = tempfile.mkdtemp(prefix=f"bench-cache-{args.mode}-")
    cfg = config_from_dict({
        "run_dir": run_dir,
        "seed": 0,
        "data": {"root": args.train, "image_size": args.image_size, "val_identities": args.held_out,
                 "num_workers": args.train_workers, "cache": args.mode},
        "model": {"backbone": args.backbone},
        "train": {"epochs": args.epochs, "batch_size": args.train_batch, "device": "cpu", "log_every_steps": 10},
    })  # fmt: skip
    caching: dict[str, float] = {}
    timed(TrainImages, "cache", caching)
    timed(Monitor, "cache", caching)
    started = time.perf_counter()
    trainer = Trainer(cfg, progress=False, overwrite=True)
    trainer.setup()
    setup = time.perf_counter() - started
    evaluations, epochs = [_seconds(trainer.evaluate)], []
    for _ in range(args.epochs):
        train = _seconds(trainer.train_epoch)
        epochs.append({"train_s": train, "eval_s": _seconds(trainer.evaluate)})
        evaluations.append(epochs[-1]["eval_s"])
        print(f"  {args.mode}: epoch {len(epochs)}: train {train:.1f} s, eval {evaluations[-1]:.2f} s", flush=True)
    trainer.sampler.set_epoch(args.epochs)
    batches = list(itertools.islice(iter(trainer.loader), trainer.steps_per_epoch))  # untimed
    compute = _seconds(lambda: [trainer.train_step(iter([batch]), 1, ()) for batch in batches])
    monitor = trainer.monitor
    held_out = monitor.holdout_batches if monitor.holdout_batches is not None else monitor.holdout_loader
    inputs = [(model_input(x, None, trainer.device, torch.preserve_format) if x.dtype == torch.uint8 else x, y)
              for x, y in held_out]  # fmt: skip
    eval_compute = _seconds(lambda: embed_loader(trainer.eval_model, inputs, trainer.device, trainer.precision))
    cached = sum(t.numel() for t in trainer.monitor.cached.values())
    if trainer.monitor.holdout_batches is not None:
        cached += sum(pixels.numel() for pixels, _ in trainer.monitor.holdout_batches)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "mode": args.mode,
        "setup_s": setup,
        "caching_s": caching,
        "evaluations_s": evaluations,
        "epochs": epochs,
        "compute_alone_s": compute,
        "eval_compute_alone_s": eval_compute,
        "steps_per_epoch": trainer.steps_per_epoch,
        "train_images": len(trainer.images),
        "cache_bytes": {
            "training": trainer.images.pixels.numel() if trainer.images.pixels is not None else 0,
            "verification": cached,
        },
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_workers_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,  # the largest one
    }


def _seconds(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def compare_cache(args: argparse.Namespace) -> None:
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "ram": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.repeats):
            for mode in ("none", "ram") if round_ % 2 == 0 else ("ram", "none"):
                out = Path(scratch) / f"{mode}-{round_}.json"
                command = [sys.executable, __file__.replace("epoch_timing", "bench_data"), *sys.argv[1:]]
                subprocess.run([*command, "--mode", mode, "--json", str(out)], check=True)
                runs[mode].append(json.loads(out.read_text()))
    result = {"runs": runs, "summary": summarise(runs), "dataset": dataset_size(Path(args.train))}
    result |= {"torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.platform()}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    print(f"json: {args.json}")


CACHES = ("TrainImages", "Monitor")  # the training images' cache, the verification images' cache


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds: per epoch (training part, and epoch / steps' compute alone), evaluations."""
    summary = {}
    for mode, rounds in runs.items():
        train = statistics.median(statistics.median(e["train_s"] for e in r["epochs"]) for r in rounds)
        compute = statistics.median(r["compute_alone_s"] for r in rounds)
        evals = [
            statistics.median(r["evaluations_s"][i] for r in rounds) for i in range(len(rounds[0]["evaluations_s"]))
        ]
        first_eval = evals[0] + statistics.median(r["caching_s"].get("Monitor", 0.0) for r in rounds)
        summary[mode] = {
            "epoch_train_s": train,
            "compute_alone_s": compute,
            "epoch_over_compute": train / compute,
            "first_evaluation_s_with_its_caching": first_eval,
            "later_evaluations_s": evals[1:],
            "evaluation_compute_alone_s": statistics.median(r["eval_compute_alone_s"] for r in rounds),
            "first_over_later": first_eval / statistics.median(evals[1:]) if len(evals) > 1 else None,
            "setup_s": statistics.median(r["setup_s"] for r in rounds),
            "caching_s": {
                k: statistics.median(r["caching_s"].get(k, 0.0) for r in rounds) for k in ("TrainImages", "Monitor")
            },
            "cache_bytes": rounds[0]["cache_bytes"],
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rounds),
            "peak_rss_workers_mib": statistics.median(r.get("peak_rss_workers_mib", 0.0) for r in rounds),
        }
    return summary


def dataset_size(root: Path) -> dict[str, int]:
    if root.is_file():
        return {"files": 1, "bytes": root.stat().st_size}
    files, _ = find_images(root)
    return {"files": len(files), "bytes": sum(path.stat().st_size for path in files)}


def print_summary(result: dict[str, Any]) -> None:
    print(f"\ndataset: {result['dataset']['files']} files, {result['dataset']['bytes'] / 1e6:.1f} MB on disk")
    for mode, s in result["summary"].items():
        later = ", ".join(f"{value:.2f}" for value in s["later_evaluations_s"])
        cache = sum(s["cache_bytes"].values()) / 1e6
        print(f"data.cache: {mode}")
        print(f"  epoch (training part) {s['epoch_train_s']:.1f} s, steps' compute alone {s['compute_alone_s']:.1f} s: "
              f"{s['epoch_over_compute']:.3f}x")  # fmt: skip
        first, alone = s["first_evaluation_s_with_its_caching"], s["evaluation_compute_alone_s"]
        print(f"  first evaluation {first:.2f} s (with its caching), later {later} s; "
              f"forward passes alone {alone:.2f} s")  # fmt: skip
        print(f"  setup {s['setup_s']:.1f} s (caching {s['caching_s']}), cache {cache:.1f} MB, peak RSS "
              f"{s['peak_rss_mib']:.0f} MiB")  # fmt: skip
