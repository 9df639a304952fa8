"""How far facetrain's alignment lands from alignments it did not make, in pixels of the 112x112 crop.

Three references, each optional (none ships with facetrain; see docs/alignment.md for where they are):

``--bin FILE``: an insightface ``.bin`` (pickled JPEG crops on the ArcFace template, read with
facetrain's restricted unpickler). With no originals, the comparison is crop to crop: MTCNN runs
on each crop (padded to 224x224 so the face has context), and the similarity S that would take
that crop onto the template is fitted from the 5 points found. Where facetrain would have put the
template's points, seen in the reference crop, is S^-1(template); the displacement is
|S^-1(t_i) - t_i| for each point, averaged over the 5.

``--crops DIR`` with ``--crop-template``: a folder of 112x112 crops made by someone else's
aligner, measured the same way against the template they used (``sphereface112``: the 96x112
SphereFace template in a 112 canvas, no shift; ``arcface``: the ArcFace template).

``--raw DIR --landmarks FILE``: original photos and 5 landmarks per photo (a SphereFace
``lfw_landmark.txt`` line: ``Name/Name_0001.jpg x1 y1 ... x5 y5``). Both sets of points are fitted onto
the ArcFace template; the displacement is where the reference alignment sends facetrain's template
points, |T_ref(T_ours^-1(t_i)) - t_i|.

``--raw DIR --crops DIR``: original photos and the reference's crops of the same photos (same
relative paths). T_ref is found by registering the photo onto the crop: the similarity whose warp
best reproduces the crop's pixels, refined from facetrain's own.

Prints the median, mean and 90th percentile per reference and the share under 1.5 px, and writes JSON.

Usage:
  python scripts/align_accuracy.py --bin small_lfw.bin --crops lfw-112X112 --crop-template sphereface112 \\
      --raw lfw_raw --landmarks lfw_landmark.txt --json align_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from facetrain.data.align import ARCFACE_112, Aligner, FaceDetector, choose_face, umeyama
from facetrain.data.align.geometry import apply, invert
from facetrain.data.preprocess import load_image
from facetrain.data.sources import find_images

TEMPLATES = {"arcface": ARCFACE_112, "sphereface112": ARCFACE_112 - np.array([8.0, 0.0])}
PAD = 56  # each side: a 112 crop becomes 224x224


class _JpegListUnpickler(pickle.Unpickler):
    """A .bin as insightface's newer tools write it: JPEG bytes as numpy uint8 arrays. Only the numpy
    classes that rebuild a plain array are allowed; anything else is refused."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")})  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}")
        return super().find_class(module, name)


def read_bin(path: Path) -> list[bytes]:
    with open(path, "rb") as file:
        blobs, _ = _JpegListUnpickler(file, encoding="bytes").load()
    return [bytes(np.asarray(blob, np.uint8)) if not isinstance(blob, bytes) else blob for blob in blobs]


def crop_displacement(detector: FaceDetector, crop: torch.Tensor, target: np.ndarray) -> tuple[float, float] | None:
    """(mean template displacement, mean landmark distance) for one reference crop; None if no face."""
    padded = F.pad(crop, (PAD, PAD, PAD, PAD))
    faces = detector.detect(padded)
    if not faces:
        return None
    face = faces[choose_face(faces, padded.shape[-1], padded.shape[-2])]
    points = face.points - PAD
    back = invert(umeyama(points, target))  # facetrain's crop -> the reference crop
    return float(np.linalg.norm(apply(back, target) - target, axis=1).mean()), float(
        np.linalg.norm(points - target, axis=1).mean()
    )


def summary(name: str, values: list[float], missed: int, extra: dict | None = None) -> dict:
    array = np.array(values)
    row = {"images": len(values) + missed, "no_face": missed, "median_px": round(float(np.median(array)), 3),
           "mean_px": round(float(array.mean()), 3), "p90_px": round(float(np.percentile(array, 90)), 3),
           "under_1.5px": round(float((array <= 1.5).mean()), 4), **(extra or {})}  # fmt: skip
    print(f"{name}: {row}")
    return row


def measure_crops(detector: FaceDetector, crops: list[torch.Tensor], target: np.ndarray, name: str) -> dict:
    displaced, landmarks, missed = [], [], 0
    for crop in crops:
        found = crop_displacement(detector, crop, target)
        if found is None:
            missed += 1
            continue
        displaced.append(found[0])
        landmarks.append(found[1])
    return summary(name, displaced, missed, {"landmark_median_px": round(float(np.median(landmarks)), 3)})


def measure_raw(aligner: Aligner, raw: Path, landmarks: Path) -> dict:
    reference = {}
    for line in landmarks.read_text().splitlines():
        fields = line.split()
        if len(fields) == 11:
            reference[fields[0]] = np.array(fields[1:], float).reshape(5, 2)
    displaced, missed = [], 0
    for path in find_images(raw)[0]:
        key = path.relative_to(raw).as_posix()
        if key not in reference:
            continue
        result = aligner.align_files([path])[0]
        if result.points is None:
            missed += 1
            continue
        ours, theirs = umeyama(result.points, ARCFACE_112), umeyama(reference[key], ARCFACE_112)
        moved = apply(theirs, apply(invert(ours), ARCFACE_112))
        displaced.append(float(np.linalg.norm(moved - ARCFACE_112, axis=1).mean()))
    return summary("raw photos vs reference landmarks", displaced, missed)


def register(raw: torch.Tensor, crop: torch.Tensor, start: np.ndarray, steps: int = 300) -> np.ndarray:
    """The similarity (raw -> crop pixels) under which the raw photo best reproduces the crop (least
    squares on the pixels, black crop borders ignored), refined from ``start``."""
    a, b = float(start[0, 0]), float(start[1, 0])
    params = torch.tensor([a, b, float(start[0, 2]), float(start[1, 2])], dtype=torch.float64, requires_grad=True)
    target = crop.double() / 255
    mask = (target.sum(0) > 0.02).double()
    height, width = raw.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(112.0, dtype=torch.float64), torch.arange(112.0, dtype=torch.float64),
                            indexing="ij")  # fmt: skip
    image = raw.double()[None] / 255
    optimiser = torch.optim.Adam([params], lr=1e-3)
    rates = torch.tensor([1e-2, 1e-2, 1.0, 1.0], dtype=torch.float64)  # per-parameter step sizes
    for _ in range(steps):
        a, b, tx, ty = params
        det = a * a + b * b  # the inverse of [[a, -b], [b, a]] is [[a, b], [-b, a]] / det
        src_x = (a * (xs - tx) + b * (ys - ty)) / det
        src_y = (-b * (xs - tx) + a * (ys - ty)) / det
        grid = torch.stack([(2 * src_x + 1) / width - 1, (2 * src_y + 1) / height - 1], -1)[None]
        warped = F.grid_sample(image, grid, mode="bilinear", align_corners=False)[0]
        loss = (((warped - target) ** 2).sum(0) * mask).mean()
        optimiser.zero_grad()
        loss.backward()
        params.grad *= rates * 1e3
        optimiser.step()
    a, b, tx, ty = params.detach().tolist()
    return np.array([[a, -b, tx], [b, a, ty]])


def measure_raw_vs_crops(aligner: Aligner, raw: Path, crops: Path, target: np.ndarray) -> dict:
    """Raw photos against someone else's crops of the same photos, registered on the pixels."""
    displaced, missed = [], 0
    for path in find_images(raw)[0]:
        crop_path = crops / path.relative_to(raw)
        if not crop_path.exists():
            continue
        result = aligner.align_files([path])[0]
        if result.points is None:
            missed += 1
            continue
        ours = umeyama(result.points, target)
        pixels = TF.pil_to_tensor(Image.open(path).convert("RGB"))
        theirs = register(pixels, TF.pil_to_tensor(Image.open(crop_path).convert("RGB")), ours)
        displaced.append(float(np.linalg.norm(apply(theirs, apply(invert(ours), target)) - target, axis=1).mean()))
    return summary("raw photos vs the reference crops of the same photos", displaced, missed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path)
    parser.add_argument("--crops", type=Path)
    parser.add_argument("--crop-template", choices=sorted(TEMPLATES), default="arcface")
    parser.add_argument("--limit", type=int, default=0, help="At most this many crops from --crops (0: all).")
    parser.add_argument("--raw", type=Path)
    parser.add_argument("--landmarks", type=Path)
    parser.add_argument("--json", default="align_accuracy.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    aligner = Aligner()
    report = {}
    if args.bin:
        blobs = read_bin(args.bin)
        crops = [TF.pil_to_tensor(load_image(f"{args.bin}[{i}]", blob)) for i, blob in enumerate(blobs)]
        report["insightface_bin"] = measure_crops(aligner.detector, crops, ARCFACE_112, f"{args.bin.name} crops")
    if args.crops:
        paths = find_images(args.crops)[0]
        paths = paths[:: max(1, len(paths) // args.limit)] if args.limit else paths
        crops = (TF.pil_to_tensor(Image.open(path).convert("RGB")) for path in paths)
        target = TEMPLATES[args.crop_template]
        report["crops"] = measure_crops(aligner.detector, crops, target, f"{args.crops.name} crops")
        report["crops"]["template"] = args.crop_template
    if args.raw and args.landmarks:
        report["raw"] = measure_raw(aligner, args.raw, args.landmarks)
    if args.raw and args.crops:
        target = TEMPLATES[args.crop_template]
        report["raw_vs_crops"] = measure_raw_vs_crops(aligner, args.raw, args.crops, target)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
