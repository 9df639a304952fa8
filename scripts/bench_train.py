"""Training-step throughput of embedder + ArcFace head on synthetic batches (no disk I/O).

Prints images/s and peak memory, and writes them as JSON.

Usage:
  python scripts/bench_train.py --backbone resnet18 --image-size 112 --batch-size 32 --device cpu
  python scripts/bench_train.py --backbone resnet50 --batch-size 256 --device cuda --amp bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
import torch.nn.functional as F

from facetrain.config import HeadConfig, ModelConfig, TrainConfig
from facetrain.models import build_embedder, build_head
from facetrain.runtime import autocast, resolve_device, resolve_precision
from facetrain.training.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--json", default="bench_train.json", help="where to write the results")
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision(args.amp, device)
    torch.manual_seed(0)
    embedder = build_embedder(ModelConfig(backbone=args.backbone, embedding_dim=args.embedding_dim), args.image_size)
    head = build_head(HeadConfig(), args.embedding_dim, args.num_classes)
    embedder, head = embedder.to(device), head.to(device)
    optimizer = build_optimizer(TrainConfig(), [embedder, head])
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            embeddings = embedder(images)
        logits, _ = head(embeddings, labels)
        scaler.scale(F.cross_entropy(logits, labels)).backward()
        scaler.step(optimizer)
        scaler.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - started
    result = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "amp": precision.name,
        "steps": args.steps,
        "images_per_sec": round(args.batch_size * args.steps / seconds, 1),
        "seconds_per_step": round(seconds / args.steps, 4),
        "peak_memory_mb": round(
            torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            1,
        ),
        "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "process max RSS",
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    with open(args.json, "w") as stream:
        json.dump(result, stream, indent=2)


if __name__ == "__main__":
    main()
