"""Throughput of the training input pipeline, and whole epochs with and without ``data.cache``.

Pipeline (the default): identity folder against .rec, with 0, 1 and 2 workers. The pipeline timed
is the one training runs: the seeded sampler with random flips, read, decode, crop/resize to uint8,
collate (``TrainImages``, ``train_loader``); the flip and the normalisation happen later, on the
training device, and are not part of it. The data is a synthetic set of small 112x112 JPEG faces
(smooth random shapes plus noise), generated once and cached with its ``.rec`` (written by
``facetrain pack``, so the same JPEG bytes). Files are read once before timing, so both sources
are timed from the page cache: the decode-bound case of a local SSD. Configurations are timed in
turn, ``--repeats`` rounds, and the median is reported. The per-image cost (read, decode,
transform) is timed separately in this process.

Epochs (``--train ROOT``): real training on an identity folder or .rec (resnet18, 112 px, CPU, a
held-out verification after every epoch and one before training), once with ``data.cache: none``
and once with ``data.cache: ram``, each in its own process (alternating order over ``--repeats``
rounds). Per epoch it reports the training part's wall time and the evaluation's, and the time of
the same number of training steps over batches already in memory (the steps' compute alone). The
cache's bytes are reported against the dataset's size on disk.

Usage:
  python scripts/bench_data.py                       # 20,000 images, workers 0 1 2, bench_data.json
  python scripts/bench_data.py --workers 2 --repeats 5
  python scripts/bench_data.py --train ../shared/data/yaleb --json bench_cache.json
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

from facetrain.data import EpochSampler, Preprocess, TrainImages, as_batch, pack_folder, scan_identities, train_loader
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
        pack_folder(folder, rec, workers=os.cpu_count() or 1, progress=False, overwrite=True)
        done.touch()
    return folder, rec


def warm(folder: Path, rec: Path) -> None:
    """Reads every file once, so that both sources are timed from the page cache."""
    for path in folder.rglob("*.jpg"):
        path.read_bytes()
    rec.read_bytes()


def images_per_second(root: Path, workers: int, batch_size: int, images: int) -> float:
    dataset = TrainImages(make_dataset(scan_identities(root), Preprocess(112)))
    sampler = EpochSampler(len(dataset), seed=1, hflip=True)
    loader = train_loader(dataset, sampler, batch_size, workers, False, collate_fn=as_batch)
    batches = iter(loader)
    for _ in range(2 if workers else 1):  # untimed: worker start-up and the first batches
        next(batches)
    started, seen = time.perf_counter(), 0
    while seen < images:
        seen += len(next(batches)[2])
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
    for image in decoded:
        preprocess.pixels(image)
    timings["transform_ms"] = time.perf_counter() - started
    assert len(records) == len(blobs)
    return {name: 1000 * seconds / count for name, seconds in timings.items()}


def main() -> None:
    from epoch_timing import compare_cache, epochs_in_this_process  # scripts/ is on sys.path when run as a script

    args = arguments()
    if args.train and args.mode:
        Path(args.json).write_text(json.dumps(epochs_in_this_process(args), indent=2) + "\n")
    elif args.train:
        compare_cache(args)
    else:
        pipeline(args)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="size of the synthetic set (at least 20,000)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "facetrain" / "bench_data"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--timed-images", type=int, default=8192, help="images timed per configuration and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all configurations (median reported)")
    parser.add_argument("--json", default="bench_data.json", help="where to write the results")
    parser.add_argument("--train", help="epochs mode: an identity folder or .rec to train on")
    parser.add_argument("--epochs", type=int, default=3, help="epochs mode: epochs per run")
    parser.add_argument("--held-out", type=int, default=8, help="epochs mode: identities held out for verification")
    parser.add_argument("--train-batch", type=int, default=64, help="epochs mode: train.batch_size")
    parser.add_argument("--image-size", type=int, default=112, help="epochs mode: data.image_size")
    parser.add_argument("--backbone", default="resnet18", help="epochs mode: model.backbone")
    parser.add_argument("--train-workers", type=int, default=2, help="epochs mode: data.num_workers")
    parser.add_argument("--mode", choices=("none", "ram"), help=argparse.SUPPRESS)  # one run, in this process
    return parser.parse_args()


def pipeline(args: argparse.Namespace) -> None:
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
