"""Whole epochs of ``facetrain train`` against a plain hand-written loop on the same images, side by side.

Both train resnet18 at 112 px, batch 64, SGD (momentum 0.9, weight decay 5e-4) with an ArcFace head
(s 64, m 0.5) and random flips, and verify all pairs of the held-out identities after every epoch
(each image embedded once, as facetrain's held-out verification does), on the CPU unless ``--device``
says otherwise.

- **facetrain**: ``Trainer.fit`` with ``data.cache: auto``: everything an epoch does (steps, the
  verification, the checkpoints, TensorBoard, the angle statistics), timed by the epoch line's phases.
- **plain loop**: the same embedder (facetrain's ``build_embedder``) and the same pixels (decoded once
  into memory by facetrain's ``Preprocess``, untimed), the loss written out in a few lines,
  verification by cosine over all held-out pairs with the best threshold, and one ``torch.save`` of
  model, head and optimizer per epoch.

Each run is a process of its own; the two alternate, ``--rounds`` times. Per epoch it reports each
phase (train, data wait, verify, save, log) and the verification's forward passes alone (the plain
loop's verify minus its metric). Prints a table and writes JSON.

Usage:
  python scripts/bench_epoch.py --root ../shared/data/yaleb --json bench_epoch.json
  python scripts/bench_epoch.py --root ../shared/data/yaleb --channels-last off   # both in NCHW
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from facetrain.config import config_from_dict
from facetrain.data import Preprocess, split_identities
from facetrain.models import build_embedder


def config(args: argparse.Namespace, run_dir: str) -> Any:
    return config_from_dict({
        "run_dir": run_dir,
        "seed": 0,
        "data": {"root": args.root, "image_size": 112, "val_identities": args.held_out, "num_workers": 0},
        "model": {"backbone": "resnet18"},
        "head": {"type": "arcface", "s": 64.0, "m": 0.5},
        "train": {"epochs": args.epochs, "batch_size": 64, "lr": 0.1, "device": args.device,
                  "channels_last": {"on": True, "off": False, "auto": "auto"}[args.channels_last],
                  "log_every_steps": 10},
    })  # fmt: skip


def run_facetrain(args: argparse.Namespace) -> dict[str, Any]:
    from facetrain.training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as run_dir:
        trainer = Trainer(config(args, run_dir), progress=False, overwrite=True)
        trainer.setup()
        result = trainer.fit()
        layout = "channels_last" if trainer.memory_format is torch.channels_last else "contiguous"
    return {"epochs": result.phases, "layout": layout, "steps_per_epoch": trainer.steps_per_epoch}


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = config(args, "unused")
    device = torch.device(args.device)
    layout = torch.channels_last if args.channels_last != "off" else torch.contiguous_format
    preprocess = Preprocess.from_config(cfg.data)
    training, held_out = split_identities(cfg.data)
    pixels = torch.stack([preprocess.load_pixels(p) for _, paths in training for p in paths])
    labels = torch.tensor([label for label, (_, paths) in enumerate(training) for _ in paths])
    val = torch.stack([preprocess.load_pixels(p) for _, paths in held_out for p in paths])
    val_labels = torch.tensor([label for label, (_, paths) in enumerate(held_out) for _ in paths])
    model = build_embedder(cfg.model, 112).to(device, memory_format=layout)
    weight = torch.nn.Parameter(torch.randn(len(training), cfg.model.embedding_dim, device=device) * 0.01)
    optimizer = torch.optim.SGD([*model.parameters(), weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    unit = lambda x: ((x.float() / 255 - 0.5) / 0.5).to(device, memory_format=layout)  # noqa: E731
    epochs = []
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as folder:
        for epoch in range(args.epochs):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(len(labels))
            for first in range(0, len(order) - 63, 64):
                index = order[first : first + 64]
                batch = pixels[index]
                flip = torch.rand(len(index)) < 0.5
                batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
                loss = arcface_loss(model(unit(batch)), weight, labels[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            trained = time.perf_counter()
            forward, accuracy = verify(model, val, val_labels, unit, cfg.eval.batch_size)
            verified = time.perf_counter()
            state = {"model": model.state_dict(), "head": weight.detach(), "optimizer": optimizer.state_dict()}
            torch.save(state, Path(folder) / "last.pt")
            saved = time.perf_counter()
            epochs.append({
                "total": saved - start, "train": trained - start, "data wait": 0.0, "verify": verified - trained,
                "save": saved - verified, "log": 0.0, "verify forward": forward, "accuracy": accuracy,
            })  # fmt: skip
            print(f"  plain: epoch {epoch + 1}: {epochs[-1]['total']:.1f} s", flush=True)
    return {"epochs": epochs, "layout": "channels_last" if layout is torch.channels_last else "contiguous"}


def arcface_loss(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    cosine = F.normalize(embeddings.float()) @ F.normalize(weight).T
    target = cosine.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
    margin = torch.cos(torch.acos(target) + 0.5)
    logits = cosine.scatter(1, labels[:, None], margin)
    return F.cross_entropy(64.0 * logits, labels)


@torch.no_grad()
def verify(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, unit: Any, batch: int):
    """(seconds of the forward passes, best-threshold accuracy over all pairs): each image once, no mirror."""
    model.eval()
    start = time.perf_counter()
    parts = []
    for first in range(0, len(pixels), batch):
        x = unit(pixels[first : first + batch])
        parts.append(model(x).float())
    features = F.normalize(torch.cat(parts)).cpu()
    forward = time.perf_counter() - start
    upper = torch.triu_indices(len(labels), len(labels), 1)
    scores = (features @ features.T)[upper[0], upper[1]]
    same = (labels[upper[0]] == labels[upper[1]]).float()
    order = torch.argsort(scores, descending=True)
    hits = torch.cumsum(same[order], 0) + (len(same) - same.sum()) - torch.cumsum(1 - same[order], 0)
    return forward, float(hits.max() / len(same))


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    report = run_facetrain(args) if args.run == "facetrain" else run_plain(args)
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(report) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="an identity folder (Extended Yale B: ../shared/data/yaleb)")
    parser.add_argument("--held-out", type=int, default=6, help="identities verified after every epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", choices=["on", "off", "auto"], default="auto",
                        help="both runs' layout; auto: facetrain's choice, plain channels_last")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default="bench_epoch.json")
    parser.add_argument("--run", choices=["facetrain", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args)
        return
    runs: dict[str, list[dict[str, Any]]] = {"facetrain": [], "plain": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for kind in ("facetrain", "plain") if round_ % 2 == 0 else ("plain", "facetrain"):
                out = Path(scratch) / f"{kind}-{round_}.json"
                print(f"round {round_ + 1}: {kind}", flush=True)
                subprocess.run([sys.executable, __file__, *sys.argv[1:], "--run", kind, "--out", str(out)], check=True)
                runs[kind].append(json.loads(out.read_text()))
    summary = summarise(runs)
    result = {"runs": runs, "summary": summary, "args": vars(args), "torch": torch.__version__,
              "cpus": os.cpu_count(), "machine": platform.platform()}  # fmt: skip
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print_table(summary)
    print(f"json: {args.json}")


PHASES = ("total", "train", "data wait", "verify", "save", "log")


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per kind, the median over rounds and epochs (the first epoch aside when there are several) of each phase."""
    summary: dict[str, Any] = {}
    for kind, rounds in runs.items():
        epochs = [e for r in rounds for e in (r["epochs"][1:] if len(r["epochs"]) > 1 else r["epochs"])]
        summary[kind] = {name: statistics.median(e[name] for e in epochs) for name in PHASES}
        summary[kind]["layout"] = rounds[0]["layout"]
        summary[kind]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rounds)
    plain = [e for r in runs["plain"] for e in r["epochs"]]
    forward = statistics.median(e["verify forward"] for e in plain)
    ours = summary["facetrain"]
    summary["ratios"] = {
        "epoch": ours["total"] / summary["plain"]["total"],
        "train": ours["train"] / summary["plain"]["train"],
        "end_of_epoch_over_verify_forward": (ours["verify"] + ours["save"] + ours["log"]) / forward,
        "verify_forward_s": forward,
    }
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'':>10} {'layout':>14} " + " ".join(f"{name:>9}" for name in PHASES) + "  peak RSS")
    for kind in ("facetrain", "plain"):
        row = summary[kind]
        values = " ".join(f"{row[name]:>8.1f}s" for name in PHASES)
        print(f"{kind:>10} {row['layout']:>14} {values}  {row['peak_rss_mib']:.0f} MiB")
    ratios = summary["ratios"]
    print(f"epoch facetrain / plain: {ratios['epoch']:.3f}x; training steps: {ratios['train']:.3f}x; end of epoch "
          f"(verify + save + log) / verification forward passes ({ratios['verify_forward_s']:.1f} s): "
          f"{ratios['end_of_epoch_over_verify_forward']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
