"""Time of ``facetrain align`` per photo: decode, MTCNN detection and the warp, by photo size.

The photos are scenes made from the bundled ORL faces: a face pasted onto smooth random colour
blobs with noise, saved as JPEG (quality 95), at the sizes a user brings: 250x250 (an LFW photo,
face about 110 px), 1000x1000 (face about 330 px) and 4000x3000 (a phone photo, face about 1100 px),
the last also with ``--min-face 80``.
Each photo is aligned ``--repeats`` times in this process and the median is reported, split into
decode, detection and the rest (fit, warp). A folder of 250x250 photos is then aligned with 0 and 2
worker processes for throughput. Prints a table and writes JSON.

Usage:
  python scripts/bench_align.py                      # CPU, bench_align.json
  python scripts/bench_align.py --device cuda --json bench_align_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from facetrain.data.align import Aligner, AlignOptions, align_folder
from facetrain.data.align.aligner import Photo

ORL = Path(__file__).resolve().parents[1] / "facetrain" / "assets" / "orl"
# name: ((width, height), face scale, --min-face). The last row looks for faces of the same share of
# the photo as the 1000x1000 row does at 20 px: 80 px of 4000.
SIZES = {
    "250x250": ((250, 250), 1.2, 20),
    "1000x1000": ((1000, 1000), 3.6, 20),
    "4000x3000": ((4000, 3000), 12.0, 20),
    "4000x3000 min-face 80": ((4000, 3000), 12.0, 80),
}


def scene(width: int, height: int, scale: float, face: Path, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(3, height // 32 + 2, width // 32 + 2, generator=generator)
    smooth = F.interpolate(low[None], size=(height, width), mode="bicubic", align_corners=False)[0]
    canvas = (smooth * 200 + 20 + 8 * torch.randn(3, height, width, generator=generator)).clamp(0, 255).byte()
    image = Image.open(face).convert("RGB")
    pasted = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    x, y = (width - pasted.width) // 2 + seed % 7, (height - pasted.height) // 2 - seed % 5
    canvas[:, y : y + pasted.height, x : x + pasted.width] = TF.pil_to_tensor(pasted)
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


def time_photo(aligner: Aligner, path: Path, repeats: int, device: torch.device) -> dict:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    totals, decodes, detects = [], [], []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        photo = Photo.open(path)
        decoded = time.perf_counter()
        faces = aligner.detector.detect(photo.pixels, photo.scale)
        sync()
        detected = time.perf_counter()
        result = aligner._crops(photo, faces)
        sync()
        end = time.perf_counter()
        assert result.crops, f"no face found in the benchmark photo {path}"
        totals.append(end - start)
        decodes.append(decoded - start)
        detects.append(detected - decoded)
    ms = lambda values: round(1000 * statistics.median(values[1:]), 1)  # noqa: E731
    return {"total_ms": ms(totals), "decode_ms": ms(decodes), "detect_ms": ms(detects),
            "warp_ms": round(ms(totals) - ms(decodes) - ms(detects), 1),
            "decoded_at": "x".join(map(str, photo.pixels.shape[-1:-3:-1]))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--folder-photos", type=int, default=96)
    parser.add_argument("--json", default="bench_align.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    faces = sorted(ORL.glob("s*/1.pgm"))
    report: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine(), "photos": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'photo':>22} {'decoded at':>11} {'total ms':>9} {'decode':>7} {'detect':>7} {'warp':>6}")
        for name, ((width, height), scale, min_face) in SIZES.items():
            path = Path(tmp, f"{width}x{height}.jpg")
            scene(width, height, scale, faces[0], 0).save(path, quality=95)
            row = time_photo(Aligner(device, min_face=min_face), path, args.repeats, device)
            report["photos"][name] = row
            print(f"{name:>22} {row['decoded_at']:>11} {row['total_ms']:>9} {row['decode_ms']:>7} "
                  f"{row['detect_ms']:>7} {row['warp_ms']:>6}")  # fmt: skip
        folder = Path(tmp, "folder")
        for index in range(args.folder_photos):
            person = folder / f"p{index % 8}"
            person.mkdir(parents=True, exist_ok=True)
            scene(250, 250, 1.2, faces[index % len(faces)], index).save(person / f"{index}.jpg", quality=95)
        report["folder"] = {"photos": args.folder_photos, "size": "250x250"}
        for workers in (0, 2) if device.type == "cpu" else (0,):
            result = align_folder(folder, Path(tmp, f"out{workers}"), AlignOptions(), device=device, workers=workers)
            rate = args.folder_photos / result.seconds
            report["folder"][f"workers_{workers}_photos_per_s"] = round(rate, 1)
            print(f"folder of {args.folder_photos} 250x250 photos, {workers} workers: {rate:.1f} photos/s "
                  f"({sum(result.counts.values()) - result.skipped} aligned)")  # fmt: skip
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":
        report["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"peak RSS {report['peak_rss_mib']} MiB; wrote {args.json}")


if __name__ == "__main__":
    main()
