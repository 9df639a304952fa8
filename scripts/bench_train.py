"""Training-step throughput: facetrain's step, and with --reference the plain loop a competent user writes.

facetrain's step is the trainer's: embedder (torchvision backbone + pool/flatten/Linear/BN neck) and
ArcFace head in float32 margin math, AMP on CUDA, gradient clipping, the device-side finite-gradient
check, fused optimizer on CUDA, channels_last and torch.compile as configured.

The reference (--reference) is the hand-written loop: the same network, a textbook ArcFace (normalise
both, cos(theta+m) with the cos - m*sin(m) fallback past pi - m), all under one autocast with a
GradScaler for fp16, NCHW, eager, torch's default SGD. The network is, for a torchvision backbone,
torchvision's model with its fc replaced by a Linear neck; for a face backbone (iresnet*, mobilefacenet),
its trunk (the same modules facetrain trains, laid out as insightface's) followed by its paper's output
layer written out in plain nn layers as insightface's training code has it: iresnet BN2d -> flatten ->
Linear -> BN1d (scale fixed at 1), mobilefacenet the global depthwise conv + BN -> flatten -> Linear
(no bias) -> BN1d. At 112 px that is facetrain's embedder layer for layer, less its 7x7 pool (the identity
there); at other sizes the reference flattens (or its depthwise conv covers) the whole map as it is.

Both run in this process on the same device, batch, image size and precision, in alternating rounds
(this machine is noisy); each figure is the median round. Peak memory is the round's CUDA peak (on
CPU: the process's max RSS, shared by both).

--pipeline also times facetrain's whole loop fed by ``train_loader`` from a generated set of 112x112
JPEGs, as an identity folder and as a .rec (``facetrain pack``), against its synthetic-tensor figure.

Usage:
  python scripts/bench_train.py --backbone resnet18 --batch-size 32 --device cpu --reference
  python scripts/bench_train.py --backbone resnet50 --batch-size 256 --device cuda --amp bf16 --reference
  python scripts/bench_train.py --backbone resnet50 --batch-size 256 --pipeline --workers 12
  python scripts/bench_train.py --backbone iresnet100 --batch-size 256 --device cuda --amp bf16 --reference
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from facetrain.config import FACE_BACKBONES, HeadConfig, ModelConfig, TrainConfig
from facetrain.data import model_input
from facetrain.models import build_embedder, build_head
from facetrain.models.backbones import create_trunk
from facetrain.models.embedder import feature_shape
from facetrain.runtime import CompiledOrEager, autocast, resolve_device, resolve_precision, use_channels_last
from facetrain.training import parallel
from facetrain.training.guard import GradientGuard
from facetrain.training.optim import build_optimizer


def facetrain_step(args, device, precision) -> Callable[[Iterator], None]:
    """The trainer's train_step, with the pieces the trainer builds for these settings."""
    embedder = build_embedder(ModelConfig(backbone=args.backbone, embedding_dim=512), args.image_size).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    embedder = embedder.to(memory_format=memory_format)
    model = CompiledOrEager(embedder, "embedder in training") if args.compile else embedder
    head = build_head(HeadConfig(), 512, args.num_classes).to(device)
    train = TrainConfig()
    optimizer = build_optimizer(train, [embedder, head], device)
    scaler = parallel.grad_scaler(device, precision.needs_scaler)
    guard = GradientGuard(active=not precision.needs_scaler)
    params = parallel.split_params(optimizer, None)
    count = 0

    def step(batches: Iterator) -> None:
        nonlocal count
        batch = next(batches)
        if len(batch) == 3:  # the training loader's uint8 pixels, flips, labels: flipped and normalised here
            images = model_input(batch[0], batch[1], device, memory_format)
        else:
            images = batch[0].to(device, non_blocking=True, memory_format=memory_format)
        labels = batch[-1].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            embeddings = model(images)
        logits, _ = head(embeddings, labels)
        scaler.scale(F.cross_entropy(logits, labels)).backward()
        scaler.unscale_(optimizer)
        guard.observe(parallel.clip_gradients(*params, train.grad_clip), count + 1, train.lr)
        scaler.step(optimizer)
        scaler.update()
        count += 1

    step.model = model  # type: ignore[attr-defined]
    return step


class TextbookArcFace(nn.Module):
    def __init__(self, dim: int, classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.s, self.cos_m, self.sin_m = s, math.cos(m), math.sin(m)
        self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(x), F.normalize(self.weight))
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(0, 1))
        phi = cosine * self.cos_m - sine * self.sin_m
        phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        one_hot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return self.s * (one_hot * phi + (1.0 - one_hot) * cosine)


def reference_network(name: str, image_size: int, dim: int = 512) -> nn.Module:
    """The plain network: torchvision's model with a Linear neck, or a face trunk with its output layer."""
    if name not in FACE_BACKBONES:
        network = getattr(torchvision.models, name)(weights=None)
        network.fc = nn.Linear(network.fc.in_features, dim)  # the Linear neck: avgpool -> flatten -> Linear
        return network
    channels, height, width = feature_shape(name, image_size)
    if name == "mobilefacenet":  # GDC: a depthwise conv over the whole map, then Linear -> BN1d
        output = nn.Sequential(
            nn.Conv2d(channels, channels, (height, width), groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.Flatten(1),
            nn.Linear(channels, dim, bias=False),
            nn.BatchNorm1d(dim),
        )
    else:  # iresnet: BN2d -> flatten -> Linear -> BN1d whose scale stays 1
        output = nn.Sequential(
            nn.BatchNorm2d(channels), nn.Flatten(1), nn.Linear(channels * height * width, dim), nn.BatchNorm1d(dim)
        )
        nn.init.ones_(output[-1].weight)
        output[-1].weight.requires_grad_(False)
    return nn.Sequential(create_trunk(name), output)


def reference_step(args, device, precision) -> Callable[[Iterator], None]:
    backbone = reference_network(args.backbone, args.image_size).to(device)
    head = TextbookArcFace(512, args.num_classes).to(device)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)

    def step(batches: Iterator) -> None:
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = F.cross_entropy(head(backbone(images), labels), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def synthetic(args, device) -> Iterator:
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    while True:
        yield images, labels


def loader_batches(root: Path, args, device) -> Iterator:
    from facetrain.data import EpochSampler, TrainImages, as_batch, train_loader
    from facetrain.data.folders import make_dataset
    from facetrain.data.identities import scan_identities
    from facetrain.data.preprocess import Preprocess

    dataset = TrainImages(make_dataset(scan_identities(root), Preprocess(args.image_size)))
    sampler = EpochSampler(len(dataset), seed=1, hflip=True)
    loader = train_loader(dataset, sampler, args.batch_size, args.workers, device.type == "cuda", collate_fn=as_batch)
    for epoch in itertools.count():  # one loader, its workers kept between epochs, as the trainer has it
        sampler.set_epoch(epoch)
        yield from loader


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_rounds(runs: dict[str, tuple[Callable, Iterator]], args, device) -> dict[str, dict[str, float]]:
    """Warm-up, then ``args.rounds`` rounds of ``args.steps`` steps of each run, in alternating order; medians."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, float] = dict.fromkeys(runs, 0.0)
    for step, batches in runs.values():
        for _ in range(args.warmup):
            step(batches)
        sync(device)
    order = list(runs.items())
    for _ in range(args.rounds):
        for name, (step, batches) in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            for _ in range(args.steps):
                step(batches)
            sync(device)
            seconds[name].append(time.perf_counter() - started)
            peaks[name] = max(peaks[name], peak_mb(device))
        order.reverse()  # each run goes first as often as last: what one leaves behind is not another's cost
    return {
        name: {
            "images_per_sec": round(args.batch_size * args.steps / statistics.median(times), 1),
            "seconds_per_step": round(statistics.median(times) / args.steps, 5),
            "peak_memory_mb": round(peaks[name], 1),
        }
        for name, times in seconds.items()
    }


def pipeline_roots(args) -> dict[str, Path]:
    from bench_data import prepare, warm  # scripts/ is on sys.path when this file runs as a script

    folder, rec = prepare(Path(args.cache), args.pipeline_images, args.image_size)
    warm(folder, rec)
    return {"pipeline_folder": folder, "pipeline_rec": rec}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--compile", action="store_true", help="torch.compile facetrain's embedder")
    parser.add_argument("--reference", action="store_true", help="also time the plain loop, side by side")
    parser.add_argument("--pipeline", action="store_true", help="also time the loop fed from JPEGs (folder, .rec)")
    parser.add_argument("--sources", nargs="+", default=["folder", "rec"], choices=["folder", "rec"])
    parser.add_argument("--pipeline-images", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for --pipeline")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "facetrain" / "bench_data"))
    parser.add_argument("--json", default="bench_train.json", help="where to write the results")
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision(args.amp, device)
    setting = {"auto": "auto", "on": True, "off": False}[args.channels_last]
    args.channels_last = use_channels_last(setting, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer sets it
    torch.manual_seed(0)
    runs = {"facetrain": (facetrain_step(args, device, precision), synthetic(args, device))}
    if args.reference:
        runs["reference"] = (reference_step(args, device, precision), synthetic(args, device))
    if args.pipeline:
        roots = pipeline_roots(args)
        for source in args.sources:
            name = f"pipeline_{source}"
            runs[name] = (facetrain_step(args, device, precision), loader_batches(roots[name], args, device))
    measured = time_rounds(runs, args, device)
    result = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "amp": precision.name,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "compile_fell_back": bool(getattr(runs["facetrain"][0].model, "failed", False)),
        "steps": args.steps,
        "rounds": args.rounds,
        "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "process max RSS",
        "torch": torch.__version__,
        **measured,
    }
    ours = measured["facetrain"]["images_per_sec"]
    if args.reference:
        result["ratio_vs_reference"] = round(ours / measured["reference"]["images_per_sec"], 3)
    for name in runs:
        if name.startswith("pipeline_"):
            result[f"{name}_vs_synthetic"] = round(measured[name]["images_per_sec"] / ours, 3)
            result["workers"] = args.workers
    print(json.dumps(result, indent=2))
    with open(args.json, "w") as stream:
        json.dump(result, stream, indent=2)


if __name__ == "__main__":
    main()
