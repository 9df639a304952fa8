"""Throughput of the training input pipeline: identity folder against .rec, with 0, 1 and 2 workers.

The pipeline timed is the one training runs: the seeded sampler with random flips, read, decode,
crop/resize, flip, to tensor, normalise, collate (``train_loader``). The data is a synthetic set of
small 112x112 JPEG faces (smooth random shapes plus noise), generated once and cached with its
``.rec`` (written by ``facetrain pack``, so the same JPEG bytes). Files are read once before timing,
so both sources are timed from the page cache: the decode-bound case of a local SSD.

Configurations are timed in turn, ``--repeats`` rounds, and the median is reported. The per-image
cost (read, decode, transform) is timed separately in this process.

Usage:
  python scripts/bench_data.py                       # 20,000 images, workers 0 1 2, bench_data.json
  python scripts/bench_data.py --workers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from facetrain.data import EpochSampler, Preprocess, pack_folder, scan_identities, train_loader
from facetrain.data.folders import make_dataset
from facetrain.data.preprocess import load_image

PER_IDENTITY = 40


def make_faces(folder: Path, count: int, size: int) -> None:
    """``count`` JPEGs of ``count / 40`` identities: a smooth random face-sized picture per identity plus noise."""
    generator = torch.Generator().manual_seed(0)
    for identity in range((count + PER_IDENTITY - 1) // PER_IDENTITY):
        base = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=generator), size=size, mode="bicubic")
        sub = folder / f"{identity:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for index in range(min(PER_IDENTITY, count - identity * PER_IDENTITY)):
            noisy = (base[0] + 0.05 * torch.randn(3, size, size, generator=generator)).clamp(0, 1)
            buffer = io.BytesIO()
            Image.fromarray((noisy * 255).byte().permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=95)
            (sub / f"{index:02d}.jpg").write_bytes(buffer.getvalue())


def prepare(cache: Path, count: int, size: int) -> tuple[Path, Path]:
    cache = cache / f"{count}x{size}"
    folder, rec, done = cache / "faces", cache / "rec" / "train.rec", cache / "ready"
    if not done.exists():
        print(f"generating {count} JPEGs of {size}x{size} in {folder} (once) ...", flush=True)
        make_faces(folder, count, size)
        pack_folder(folder, rec, workers=os.cpu_count() or 1, progress=False)
        done.touch()
    return folder, rec


def warm(folder: Path, rec: Path) -> None:
    """Reads every file once, so that both sources are timed from the page cache."""
    for path in folder.rglob("*.jpg"):
        path.read_bytes()
    rec.read_bytes()


def images_per_second(root: Path, workers: int, batch_size: int, images: int) -> float:
    dataset = make_dataset(scan_identities(root), Preprocess(112))
    loader = train_loader(dataset, EpochSampler(len(dataset), seed=1, hflip=True), batch_size, workers, False)
    batches = iter(loader)
    for _ in range(2 if workers else 1):  # untimed: worker start-up and the first batches
        next(batches)
    started, seen = time.perf_counter(), 0
    while seen < images:
        seen += len(next(batches)[1])
    seconds = time.perf_counter() - started
    del batches, loader
    return seen / seconds


def per_image_costs(folder: Path, rec: Path, count: int) -> dict[str, float]:
    """Milliseconds per image of each stage, timed in this process over ``count`` images."""
    files = sorted(folder.rglob("*.jpg"))[:count]
    dataset = make_dataset(scan_identities(rec), Preprocess(112))
    preprocess = Preprocess(112)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    blobs = [path.read_bytes() for path in files]
    timings["read_file_ms"] = time.perf_counter() - started
    started = time.perf_counter()
    records = [dataset.source.payload(int(dataset.positions[i])).image for i in range(count)]
    timings["read_record_ms"] = time.perf_counter() - started
    started = time.perf_counter()
    decoded = [load_image("x", blob) for blob in blobs]
    timings["decode_ms"] = time.perf_counter() - started
    started = time.perf_counter()
    for index, image in enumerate(decoded):
        preprocess(image, flip=index % 2 == 0)
    timings["transform_ms"] = time.perf_counter() - started
    assert len(records) == len(blobs)
    return {name: 1000 * seconds / count for name, seconds in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="size of the synthetic set (at least 20,000)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "facetrain" / "bench_data"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--timed-images", type=int, default=8192, help="images timed per configuration and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all configurations (median reported)")
    parser.add_argument("--json", default="bench_data.json", help="where to write the results")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker: one thread per process
    folder, rec = prepare(Path(args.cache), args.images, 112)
    warm(folder, rec)
    runs: dict[str, list[float]] = {}
    for round_ in range(args.repeats):
        for workers in args.workers:
            for name, root in (("folder", folder), ("rec", rec)):
                speed = images_per_second(root, workers, args.batch_size, args.timed_images)
                runs.setdefault(f"{name} workers={workers}", []).append(speed)
                print(f"round {round_ + 1}: {name:6s} workers={workers}: {speed:7.0f} images/s", flush=True)
    costs = per_image_costs(folder, rec, min(2000, args.images))
    result = {
        "images_per_second": {key: statistics.median(values) for key, values in runs.items()},
        "all_rounds": runs,
        "per_image_ms": costs,
        "dataset": {"images": args.images, "size": 112, "rec_bytes": rec.stat().st_size},
        "batch_size": args.batch_size,
        "peak_rss_mib": {
            "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        },
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }
    print(f"\nmedian images/s (batch {args.batch_size}, 112 px):")
    for key, value in result["images_per_second"].items():
        print(f"  {key:18s} {value:7.0f}")
    print("per image, one core: " + ", ".join(f"{k.removesuffix('_ms')} {v:.3f} ms" for k, v in costs.items()))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
