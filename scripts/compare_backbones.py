"""Compares the face backbones on a real face set: resnet18 vs iresnet18 vs mobilefacenet (issue 28, part 4).

Protocol (the default; what every flag below leaves unchanged is the same as scripts/compare_heads.py):
  - Data: ``--data`` (default ../shared/data/yaleb: Extended Yale B, 38 people x ~64 grey 168x192 images).
    10 identities are held out (data.val_identities=10, data.split_seed=0); the other 28 train.
  - Pairs: one LFW-layout file of 10 folds x (300 same + 300 different) pairs over the held-out people only,
    drawn once by pairgen.make_pairs (``--pairs-seed``) into ``--out`` and reused by every run.
  - Training, the same for every backbone: 512-d embedding (the field's default, and what iresnet and
    mobilefacenet were designed around), 112 px (the size both face networks' 7x7 output layers are
    built for; the 168x192 images are resized to a square, no crop), each backbone with its own neck
    (resnet18: global pool + Linear + BN; iresnet18: BN, flatten the 7x7 map, Linear, BN;
    mobilefacenet: the 7x7 global depthwise conv, Linear, BN). Head arcface with its defaults
    (s=64, m=0.5, margin ramped in over head.margin_warmup_epochs = 4 epochs). Batch 32, SGD lr 0.05
    momentum 0.9, weight decay 5e-4, cosine decay after 1 warm-up epoch, grad clip 5, ``--epochs`` 10,
    seeds ``--seeds`` 0 1, one loader worker, ``--device`` cpu, torch's default thread count. The
    optimiser settings are compare_heads.py's, kept so that the two tables differ only in what they
    compare: with 28 classes and ~1,780 images a batch of 32 gives ~55 steps an epoch, and the field's
    lr 0.1 at batch 512 scales (linearly) to far less than 0.05, which compare_heads found to train well
    here. No evaluation during training, so nothing is selected on the test pairs.
  - Evaluation: last.pt after the last epoch, scored by facetrain.evaluation.evaluate.run_eval (flip fusion
    on): 10-fold accuracy (mean and std over folds), TAR@FAR=1e-2 and ROC AUC.
  - Timing: wall clock of each Trainer.train_epoch; the table gives the median epoch per backbone.
  - Cost of the embedder (backbone + neck, no head) at ``--image-size``: its parameters, and its
    multiply-adds per image counted by torch.utils.flop_counter.FlopCounterMode on one image (convs and
    matmuls; BN, PReLU and additions are not counted). FlopCounterMode reports FLOPs with one multiply-add =
    2 FLOPs; the table gives GMACs (its count / 2), which is what insightface's model zoo calls "GFLOPs":
    its r50 is listed at 6.3 GFLOPs at 112 px, and our iresnet50 counts 6.31 GMACs (12.6 G FLOPs by
    FlopCounterMode's convention); likewise r100 12.1 (ours 12.09) and mbf 0.45 (ours 0.44). The JSON keeps
    both figures and the iresnet50 check.

The reduced protocol (``--images-per-identity N``): each training identity keeps a fixed, seeded subset of N
of its images (``--subset-seed``; sorted names, random.Random sample), the same subset for every backbone
and seed; the held-out people keep all their images, so the split and the pairs are the full protocol's.
The subset is a folder of links, ``<out>/subset-<N>-seed<S>``. Everything else is unchanged, 10 epochs
included (the margin warm-up alone takes 4); an epoch is then N*28 images (less the last part batch).

Each run writes ``<out>/<backbone>[-n<N>]-seed<S>/result.json``; a run whose result.json holds the same
settings is skipped, so an interrupted comparison continues where it stopped (``--force`` redoes it).

Usage (from the repository root), the full protocol (about 4 hours of a 2-core CPU, more while shared):
  .venv/bin/python scripts/compare_backbones.py
The reduced run of the table measured on a 2-core CPU (seed 0 only: all it had time for; see the JSON's settings):
  python scripts/compare_backbones.py --images-per-identity 6 --seeds 0 --backbones iresnet18 mobilefacenet resnet18
Just the parameter and multiply-add counts:
  .venv/bin/python scripts/compare_backbones.py --cost-only --backbones resnet18 iresnet18 iresnet50 mobilefacenet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
from pathlib import Path
from typing import Any

import _compare  # scripts/ is on sys.path when this file runs as a script
import torch
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
from torch.utils.flop_counter import FlopCounterMode

from facetrain.config import BACKBONE_NAMES, DataConfig, ModelConfig, config_from_dict, config_to_dict
from facetrain.data.identities import split_identities
from facetrain.models import build_embedder
from facetrain.runtime import resolve_device

BACKBONES = ("resnet18", "iresnet18", "mobilefacenet")
EMBEDDING_DIM = 512
# insightface's model zoo (arcface_torch) lists r50 at 6.3 "GFLOPs" at 112 px: the convention check.
INSIGHTFACE_R50_GFLOPS = 6.3


def run_config(args: argparse.Namespace, backbone: str, seed: int, root: Path) -> dict[str, Any]:
    """The raw config of one run; only ``backbone`` and ``seed`` differ between runs."""
    subset = f"-n{args.images_per_identity}" if args.images_per_identity else ""
    model = {"backbone": backbone, "embedding_dim": EMBEDDING_DIM, "pool_size": 1, "dropout": 0.0}
    head = {"type": "arcface"}  # s, m and the margin warm-up: arcface's defaults
    return _compare.run_config(args, Path(args.out) / f"{backbone}{subset}-seed{seed}", seed, root, model, head)


def data_config(root: Path) -> DataConfig:
    return DataConfig(root=str(root), val_identities=HELD_OUT, split_seed=SPLIT_SEED, min_images_per_identity=2)


def make_subset(data: Path, out: Path, per_identity: int, seed: int) -> tuple[Path, str]:
    """A folder of links to ``data``: ``per_identity`` images of each training identity, every held-out image.

    The held-out people are the full set's (checked), so the pairs drawn over them are the same.
    Returns the folder and a digest of what it holds.
    """
    full = data_config(data)
    training, held_out = split_identities(full)
    root = out / f"subset-{per_identity}-seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    rng, digest = random.Random(seed), hashlib.sha256()
    chosen = [(name, sorted(rng.sample(sorted(paths), min(per_identity, len(paths))))) for name, paths in training]
    for name, paths in chosen + [(name, list(paths)) for name, paths in held_out]:
        (root / name).mkdir(parents=True)
        for path in paths:
            (root / name / path.name).symlink_to(Path(path).resolve())
            digest.update(f"{name}/{path.name}\n".encode())
    _, subset_held_out = split_identities(data_config(root))
    if [name for name, _ in subset_held_out] != [name for name, _ in held_out]:
        raise RuntimeError(f"{root}: the subset holds out other people than {data}")
    return root, digest.hexdigest()


def model_cost(backbone: str, image_size: int) -> dict[str, Any]:
    """The embedder's parameters and its multiply-adds on one image (FlopCounterMode counts 2 FLOPs each)."""
    embedder = build_embedder(ModelConfig(backbone=backbone, embedding_dim=EMBEDDING_DIM), image_size).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        embedder(torch.zeros(1, 3, image_size, image_size))
    flops = counter.get_total_flops()
    return {
        "parameters": sum(p.numel() for p in embedder.parameters()),
        "flops_per_image": flops,  # FlopCounterMode's convention: 1 multiply-add = 2 FLOPs
        "gmacs_per_image": flops / 2 / 1e9,  # = the "GFLOPs" of insightface's tables
        "image_size": image_size,
    }


def convention_check() -> dict[str, Any]:
    """Which counting convention insightface's 6.3 "GFLOPs" for r50 at 112 px is."""
    counted = model_cost("iresnet50", 112)
    gmacs, gflops = counted["gmacs_per_image"], counted["flops_per_image"] / 1e9
    matches = "multiply-adds" if abs(gmacs - INSIGHTFACE_R50_GFLOPS) < abs(gflops - INSIGHTFACE_R50_GFLOPS) else "FLOPs"
    return {
        "iresnet50_gmacs_at_112": round(gmacs, 3),
        "iresnet50_gflops_at_112": round(gflops, 3),
        "insightface_r50_gflops": INSIGHTFACE_R50_GFLOPS,
        "insightface_convention": f"its GFLOPs count {matches}",
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One backbone's runs -> means over seeds, per-seed values, the median epoch and the model's cost."""
    return {key: runs[0][key] for key in ("parameters", "gmacs_per_image", "flops_per_image")} | summarise_seeds(runs)


def markdown_table(backbones: dict[str, dict[str, Any]], device: str) -> str:
    lines = [
        f"| backbone | accuracy % (± std over folds) | per seed | TAR@FAR=1e-2 % | per seed | ROC AUC "
        f'| epoch s ({device}, median) | img/s | params (M) | GMACs/img (insightface "GFLOPs") | seeds |',
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backbone, row in backbones.items():
        lines.append(
            f"| {backbone} | {percent(row['accuracy'])} ± {percent(row['accuracy_std'])} "
            f"| {', '.join(map(percent, row['accuracy_per_seed']))} | {percent(row['tar@far=1e-2'])} "
            f"| {', '.join(map(percent, row['tar@far=1e-2_per_seed']))} | {row['roc_auc']:.4f} "
            f"| {row['median_epoch_seconds']:.1f} | {row['images_per_sec']:.1f} "
            f"| {row['parameters'] / 1e6:.2f} | {row['gmacs_per_image']:.3f} "
            f"| {' '.join(map(str, row['seeds']))} |"
        )
    return "\n".join(lines)


def full_protocol_estimate(
    backbones: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]], full_images: int, args
) -> dict[str, Any]:
    """Seconds the full protocol would take at the measured speeds: every epoch of every seed, and the evaluations."""
    per_epoch = (full_images // args.batch_size) * args.batch_size
    estimate = {}
    for backbone, row in backbones.items():
        train = per_epoch / row["images_per_sec"] * args.epochs
        evaluate = statistics.mean(run.get("eval_seconds", 0.0) for run in runs[backbone])
        estimate[backbone] = round((train + evaluate) * 2, 0)  # two seeds
    return {
        "training_images_per_epoch": per_epoch,
        "seeds": 2,
        "seconds": estimate,
        "total_seconds": sum(estimate.values()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _compare.add_arguments(parser, image_size=112, out=Path("runs/compare_backbones"))
    parser.add_argument("--backbones", nargs="+", choices=BACKBONE_NAMES, default=list(BACKBONES))
    parser.add_argument(
        "--images-per-identity",
        type=int,
        default=None,
        metavar="N",
        help="train on a fixed, seeded subset of N images of each training identity (default: all); "
        "held-out people and pairs unchanged",
    )
    parser.add_argument("--subset-seed", type=int, default=0, help="which N images (--images-per-identity)")
    parser.add_argument("--cost-only", action="store_true", help="print parameters and GMACs, train nothing")
    args = parser.parse_args(argv)
    if args.json is None:
        args.json = args.out / "compare_backbones.json"
    if args.images_per_identity is not None and args.images_per_identity < 2:
        parser.error("--images-per-identity: at least 2")
    return args


def main() -> None:
    args = parse_args()
    costs = {backbone: model_cost(backbone, args.image_size) for backbone in args.backbones}
    check = convention_check()
    if args.cost_only:
        print(json.dumps({"cost": costs, "convention_check": check}, indent=2))
        return
    full_training, _ = split_identities(data_config(args.data))
    full_images = sum(len(paths) for _, paths in full_training)
    root, subset = args.data, None
    if args.images_per_identity:
        root, digest = make_subset(args.data, args.out, args.images_per_identity, args.subset_seed)
        subset = {"root": str(root), "per_identity": args.images_per_identity, "seed": args.subset_seed}
        subset |= {"sha256": digest, "training_images": len(full_training) * args.images_per_identity}
        print(f"subset: {root} ({args.images_per_identity} images of each of {len(full_training)} training people)")
    template = config_from_dict(run_config(args, args.backbones[0], args.seeds[0], root))
    pairs_file, image_root, pairs_digest = write_holdout_pairs(
        template.data, args.out, args.pairs_per_fold, args.pairs_seed
    )
    print(f"pairs: {pairs_file} ({FOLDS} folds x {args.pairs_per_fold} same + {args.pairs_per_fold} different)")
    runs: dict[str, list[dict[str, Any]]] = {backbone: [] for backbone in args.backbones}
    plan = [(backbone, seed) for seed in args.seeds for backbone in args.backbones]  # seed-major: whole tables first
    for index, (backbone, seed) in enumerate(plan, 1):
        config = config_from_dict(run_config(args, backbone, seed, root), source=f"{backbone} seed {seed}")
        settings = {"config": config_to_dict(config), "pairs_sha256": pairs_digest, "subset": subset}
        settings = json.loads(json.dumps(settings))
        label = f"[{index}/{len(plan)}] {backbone} seed {seed}"
        about = {"backbone": backbone} | costs[backbone]
        result = run_or_reuse(config, settings, (pairs_file, image_root), args.force, label, about)
        print(f"{label}: {readings(result)}", flush=True)
        runs[backbone].append(result)

    device = resolve_device(args.device)
    backbones = {backbone: summarise(backbone_runs) for backbone, backbone_runs in runs.items()}
    table = markdown_table(backbones, device.type)
    estimate = full_protocol_estimate(backbones, runs, full_images, args)
    print("\n" + table)
    print(f"\nfull protocol at these speeds: {estimate['total_seconds'] / 3600:.1f} h ({estimate['seconds']})")
    pairs = {key: runs[args.backbones[0]][0]["report"][key] for key in ("source", "pairs", "same", "different")}
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    settings |= {"held_out_identities": HELD_OUT, "split_seed": SPLIT_SEED, "folds": FOLDS, "subset": subset}
    all_runs = [run for backbone_runs in runs.values() for run in backbone_runs]
    write_json(
        args.json,
        {"settings": settings, "config_template": config_to_dict(template), "pairs": pairs,
         "environment": environment(device), "convention_check": check, "backbones": backbones,
         "full_protocol_estimate": estimate, "runs": all_runs, "table": table},
    )  # fmt: skip
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
