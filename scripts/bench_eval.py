"""Evaluation speed: images/s of the embedding pass, and seconds for the metrics on 6000 pairs.

The embedding pass decodes, preprocesses and embeds real image files (the bundled ORL faces, cycled
to --images files) with flip fusion, exactly as `facetrain eval` does. The metrics time covers the
10-fold accuracy, ROC AUC, EER and TAR@FAR for both flip-fused and plain embeddings of an LFW-sized
list (6000 pairs in 10 folds). Prints the results and writes them as JSON.

Usage:
  python scripts/bench_eval.py --backbone resnet18 --image-size 112 --device cpu
  python scripts/bench_eval.py --backbone resnet50 --image-size 112 --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from facetrain.config import ModelConfig
from facetrain.data.identities import scan_identities
from facetrain.data.preprocess import Preprocess
from facetrain.evaluation.embedding import embed_pairs_images
from facetrain.evaluation.evaluate import report_pairs
from facetrain.evaluation.pairs import PairList
from facetrain.models import build_embedder
from facetrain.runtime import resolve_device, resolve_precision

ORL = Path(__file__).resolve().parents[1] / "facetrain" / "assets" / "orl"


def image_list(count: int) -> PairList:
    files = [path for _, paths in scan_identities(ORL) for path in paths]
    images = [files[i % len(files)] for i in range(count)]
    return PairList(
        name="bench", source=ORL, format="list", images=images,
        left=[0], right=[1], is_same=[True], folds=None,
    )  # fmt: skip


def lfw_sized_pairs(generator: torch.Generator) -> tuple[PairList, torch.Tensor, torch.Tensor]:
    """6000 pairs over 7000 images in 10 folds of 300 same + 300 different, with plausible embeddings."""
    images, pairs = 7000, 6000
    left = torch.randint(0, images, (pairs,), generator=generator)
    right = torch.randint(0, images, (pairs,), generator=generator)
    is_same = ([True] * 300 + [False] * 300) * 10
    plain = F.normalize(torch.randn(images, 512, generator=generator), dim=1)
    # Pull each same pair's right image towards its left one so scores separate somewhat.
    same_idx = torch.tensor(is_same)
    plain[right[same_idx]] = F.normalize(plain[left[same_idx]] + 0.8 * plain[right[same_idx]], dim=1)
    fused = F.normalize(plain + 0.1 * torch.randn(images, 512, generator=generator), dim=1)
    pair_list = PairList(
        name="lfw_sized", source=Path("synthetic"), format="lfw", images=[Path(f"{i}.jpg") for i in range(images)],
        left=left.tolist(), right=right.tolist(), is_same=is_same, folds=[i // 600 for i in range(pairs)],
    )  # fmt: skip
    return pair_list, plain, fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--images", type=int, default=400, help="image files to embed (ORL, cycled)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="bench_eval.json")
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    embedder = build_embedder(ModelConfig(backbone=args.backbone, embedding_dim=args.embedding_dim), args.image_size)
    embedder = embedder.to(device).eval()
    preprocess = Preprocess(args.image_size)
    warmup = image_list(args.batch_size)
    embed_pairs_images(embedder, warmup, preprocess, device, precision, args.batch_size)  # warm-up
    images = image_list(args.images)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    embed_pairs_images(embedder, images, preprocess, device, precision, args.batch_size, args.workers)
    if device.type == "cuda":
        torch.cuda.synchronize()
    embed_seconds = time.perf_counter() - started

    pair_list, plain, fused = lfw_sized_pairs(torch.Generator().manual_seed(0))
    started = time.perf_counter()
    report = report_pairs(pair_list, plain, fused, folds=10)
    metrics_seconds = time.perf_counter() - started

    result = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "device": str(device),
        "amp": precision.name,
        "threads": torch.get_num_threads(),
        "images": args.images,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "embed_images_per_sec": round(args.images / embed_seconds, 1),
        "embed_note": "decode + preprocess + forward of each image and its mirror (flip fusion)",
        "metrics_pairs": report.pairs,
        "metrics_seconds": round(metrics_seconds, 3),
        "metrics_note": "10-fold accuracy, ROC AUC, EER, TAR@FAR x4, for flip and plain embeddings",
        "peak_memory_mb": round(
            torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            1,
        ),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
