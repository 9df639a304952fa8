"""IJB scoring speed and memory: template pooling plus pair scoring, from precomputed features.

What `facetrain eval --ijb ROOT --features FILE.npy` does after reading the meta files, on synthetic
data with IJB-C's counts (defaults): 469,375 image features of 512 dimensions, 23,124 templates,
15,658,489 template pairs of which 19,557 genuine (insightface's IJB-C meta files). The synthetic
layout: images are spread evenly over the templates; within a template, runs of 1 to 5 images share
a media (a video's frames); pairs are drawn uniformly at random, the worst case for the scorer:
few pairs share a template, so its matrix-product blocks compute every template against every other
(about 23k x 23k scores) to use 15.7M of them.

Timed: pooling (norm and detector-score weighting, media means, template sums), scoring every pair,
then the metrics (TAR at six FARs under both rules, ROC AUC, the headline threshold). Peak memory is
the process's peak resident set (ru_maxrss), which includes the 0.96 GB of input features.

With ``--through-files DIR`` it also writes the synthetic meta files and features (.npy) there and
times what the command does with them: reading and checking the meta files, then the same pooling,
scoring and metrics from the ``.npy`` (as ``facetrain eval --ijb DIR --features DIR/features.npy``).

Usage:
  python scripts/bench_ijb.py                       # IJB-C's counts
  python scripts/bench_ijb.py --through-files /tmp/ijbc_synthetic
  python scripts/bench_ijb.py --images 50000 --templates 2000 --pairs 1000000   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from facetrain.evaluation.ijb.meta import Images, Pairs
from facetrain.evaluation.ijb.protocol import Protocol
from facetrain.evaluation.ijb.run import verification
from facetrain.evaluation.ijb.templates import PoolMode, pool_templates


def synthetic(
    images: int, templates: int, pairs: int, genuine: int, dim: int, seed: int
) -> tuple[Images, Pairs, torch.Tensor]:
    rng = np.random.default_rng(seed)
    template_of = np.sort(rng.integers(0, templates, images))
    template_of[:templates] = np.arange(templates)  # every template has an image
    template_of.sort()
    run_starts = np.cumsum(rng.integers(1, 6, images))  # media of 1-5 consecutive images
    media_of = np.searchsorted(run_starts, np.arange(images), side="right").astype(np.int64)
    subject_of_template = rng.integers(0, max(templates // 6, 2), templates)
    features = torch.from_numpy(rng.standard_normal((images, dim), dtype=np.float32)) * 10
    features += torch.from_numpy(rng.standard_normal((templates // 6 + 2, dim), dtype=np.float32))[
        torch.from_numpy(subject_of_template[template_of])
    ]
    first = rng.integers(0, templates, pairs)
    second = rng.integers(0, templates, pairs)
    second[:genuine] = _mates(subject_of_template, first[:genuine], rng)
    label = subject_of_template[first] == subject_of_template[second]
    meta = Images(
        names=[], landmarks=np.zeros((0, 5, 2), np.float32), scores=rng.uniform(0.5, 1.0, images).astype(np.float32),
        templates=template_of.astype(np.int64), medias=media_of,
    )  # fmt: skip
    return meta, Pairs(first, second, label, "synthetic"), features


def _mates(subject_of: np.ndarray, first: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A template of the same subject for each of ``first`` (itself when it is the subject's only one)."""
    order = np.argsort(subject_of, kind="stable")
    starts = np.searchsorted(subject_of[order], subject_of[first], side="left")
    ends = np.searchsorted(subject_of[order], subject_of[first], side="right")
    return order[starts + (rng.random(len(first)) * (ends - starts)).astype(np.int64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=469_375)
    parser.add_argument("--templates", type=int, default=23_124)
    parser.add_argument("--pairs", type=int, default=15_658_489)
    parser.add_argument("--genuine", type=int, default=19_557)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("runs/bench/bench_ijb.json"))
    parser.add_argument("--through-files", type=Path, default=None, help="Also time the meta files' reading.")
    args = parser.parse_args()
    if args.through_files is not None:
        return through_files(args)

    meta, pairs, features = synthetic(args.images, args.templates, args.pairs, args.genuine, args.dim, args.seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    templates = pool_templates(features, meta.templates, meta.medias, meta.scores, PoolMode())
    pooled = time.perf_counter()
    protocol = Protocol(Path("."), "IJBC", "11", meta, pairs=pairs)
    report = verification(protocol, templates, "synthetic", PoolMode().describe(), progress=False)
    done = time.perf_counter()
    result = {
        "images": args.images, "templates": args.templates, "pairs": args.pairs, "dim": args.dim,
        "threads": torch.get_num_threads(),
        "pool_s": round(pooled - start, 2), "score_and_metrics_s": round(done - pooled, 2),
        "total_s": round(done - start, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "rss_before_gb": round(before, 2),
        "tar_at_far_1e-4": report.tar_at_far["1e-4"], "genuine": report.genuine, "impostor": report.impostor,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


def through_files(args: argparse.Namespace) -> None:
    from facetrain.evaluation.ijb.protocol import read_protocol
    from facetrain.evaluation.ijb.run import run_ijb

    root = args.through_files
    if not (root / "features.npy").exists():
        write_files(args)
        os.execv(sys.executable, [sys.executable, *sys.argv])  # measure in a fresh process: its peak is the run's
    start = time.perf_counter()
    protocol = read_protocol(root, "IJBC", "11", need_images=False)
    read = time.perf_counter()
    report = run_ijb(protocol, features_file=root / "features.npy")
    done = time.perf_counter()
    result = {
        "images": len(protocol.images.names), "pairs": len(protocol.pairs.first), "dim": args.dim,
        "threads": torch.get_num_threads(), "read_meta_s": round(read - start, 2),
        "features_pool_score_metrics_s": round(done - read, 2), "total_s": round(done - start, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "tar_at_far_1e-4": report.tar_at_far["1e-4"],
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


def write_files(args: argparse.Namespace) -> None:
    """The synthetic set as the release lays it out (dummy landmarks), and its features as .npy."""
    meta, pairs, features = synthetic(args.images, args.templates, args.pairs, args.genuine, args.dim, args.seed)
    root = args.through_files
    (root / "meta").mkdir(parents=True, exist_ok=True)
    names = np.char.add(np.arange(1, args.images + 1).astype(str), ".jpg")
    points = np.full((args.images, 10), 50.0)
    with open(root / "meta" / "ijbc_name_5pts_score.txt", "w") as file:
        np.savetxt(file, np.column_stack([names, points.astype(str), meta.scores.astype(str)]), fmt="%s")
    with open(root / "meta" / "ijbc_face_tid_mid.txt", "w") as file:
        np.savetxt(file, np.column_stack([names, meta.templates.astype(str), meta.medias.astype(str)]), fmt="%s")
    table = np.column_stack([pairs.first, pairs.second, pairs.label.astype(np.int64)])
    np.savetxt(root / "meta" / "ijbc_template_pair_label.txt", table, fmt="%d")
    np.save(root / "features.npy", features.numpy())


if __name__ == "__main__":
    main()
