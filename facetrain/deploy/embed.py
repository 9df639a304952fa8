"""Embeds every image under a folder with a checkpoint or a model file, and writes one file.

The folder is either flat (``root/<image>``) or has one sub-folder per identity
(``root/<identity>/.../<image>``); in the latter case each row also gets its identity as a label.
Rows are L2-normalised float32 embeddings of the plain image: no flip fusion, so they match what
an exported model returns for the same file. The model file is a facetrain export or a foreign
TorchScript or ONNX embedder (``facetrain.deploy.load_scorable``).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facetrain.data import Aligner, Preprocess
from facetrain.deploy.inputs import EmbedInputs, check_embed
from facetrain.deploy.model_file import InputOptions
from facetrain.deploy.scorable import load_scorable
from facetrain.errors import ConfigError, DataError
from facetrain.files import atomic_write
from facetrain.models import ModuleEmbedder, PixelEmbedder, load_model
from facetrain.runtime import resolve_precision


@dataclass
class EmbedResult:
    out: Path
    count: int  # images embedded
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    images_per_sec: float = 0.0


class _Files(Dataset):
    """Images as uint8 pixels, cropped and sized; a file that fails to decode yields its error message instead."""

    def __init__(self, paths: list[Path], preprocess: Preprocess, align: tuple[int, int] | None = None) -> None:
        self.paths, self.preprocess, self.align = paths, preprocess, align
        self._aligner: Aligner | None = None  # made in each worker process on first use

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            if self.align is None:
                return index, self.preprocess.load_pixels(self.paths[index]), None
            if self._aligner is None:
                self._aligner = Aligner(size=self.align)
            path = self.paths[index]
            return index, self.preprocess.pixels(self._aligner.crop_file(path), source=str(path)), None
        except DataError as exc:
            return index, None, str(exc)


def _collate(
    items: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """(indices of readable images, their stacked tensors or None, (index, reason) of the rest)."""
    good = [(index, image) for index, image, _ in items if image is not None]
    failed = [(index, reason) for index, image, reason in items if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return [index for index, _ in good], images, failed


def embed_folder(
    images: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    model: str | Path | None = None,
    fmt: str = "npz",
    batch_size: int = 64,
    device: torch.device,
    num_workers: int = 0,
    progress: bool = False,
    align: tuple[int, int] | None = None,
    checked: EmbedInputs | None = None,
    inputs: InputOptions = InputOptions(),
) -> EmbedResult:
    """Embeds every image under ``images`` and writes them to ``out`` as ``.npz`` or ``.csv``.

    Give exactly one of ``checkpoint`` (a facetrain training checkpoint) or ``model`` (a file from
    ``facetrain export``, or a foreign TorchScript or ONNX embedder fed as ``inputs`` say; see
    ``load_scorable``). Embeddings are L2-normalised float32 without flip fusion. Files that
    cannot be decoded are skipped and listed in the result rather than stopping the run. With
    ``align`` (a crop's width and height), each photo's face is detected and aligned onto the ArcFace
    template of that size first (on CPU,
    in the loader's workers); photos without a face are skipped and listed likewise.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    # ``checked``: what check_embed returned for these arguments already (the folder is walked once).
    root, out, paths, has_labels = checked or check_embed(images, out, checkpoint, model, fmt, inputs)

    embedder: PixelEmbedder
    if checkpoint is not None:
        loaded = load_model(checkpoint, device)
        embedder = ModuleEmbedder(loaded.embedder, loaded.preprocess, device, resolve_precision("auto", device))
    else:
        # An export or a foreign model, fed as its metadata or ``inputs`` say, in float32 (no autocast).
        embedder = load_scorable(model, device, **inputs._asdict())

    relative = [path.relative_to(root).as_posix() for path in paths]
    dataset = _Files(paths, embedder.preprocess, align)
    kept, vectors, skipped, seconds = _run(embedder, dataset, batch_size, num_workers, progress)
    if not kept:
        first = skipped[0][1]
        raise DataError(f"none of the {len(paths)} images in '{root}' could be read (first: {first})")

    rows = [relative[index] for index in kept]
    labels = [row.split("/", 1)[0] if "/" in row else "" for row in rows] if has_labels else None
    _write(out, fmt, vectors, rows, labels)
    return EmbedResult(
        out=out,
        count=len(kept),
        skipped=[(relative[index], reason) for index, reason in skipped],
        images_per_sec=len(kept) / seconds if seconds > 0 else 0.0,
    )


@torch.inference_mode()
def _run(
    embedder: PixelEmbedder, dataset: _Files, batch_size: int, num_workers: int, progress: bool
) -> tuple[list[int], np.ndarray, list[tuple[int, str]], float]:
    """(kept indices, (N, D) float32 embeddings, (index, reason) skipped, seconds spent)."""
    device = embedder.device
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    kept: list[int] = []
    chunks: list[torch.Tensor] = []
    skipped: list[tuple[int, str]] = []
    start = time.perf_counter()
    restore = embedder.prepare()
    bar = tqdm(total=len(dataset), unit="img", desc="embed", disable=not progress, dynamic_ncols=True)
    try:
        for indices, pixels, failed in loader:
            skipped.extend(failed)
            if pixels is not None:
                outputs = embedder(pixels.to(device, non_blocking=True))  # (B, 3, S, S) uint8 -> (B, D)
                chunks.append(F.normalize(outputs.float(), dim=1).cpu())
                kept.extend(indices)
            bar.update(len(indices) + len(failed))
    finally:
        bar.close()
        restore()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # count the last batch's kernels in the timing
    seconds = time.perf_counter() - start
    vectors = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    return kept, vectors, skipped, seconds


def _write(out: Path, fmt: str, vectors: np.ndarray, rows: list[str], labels: list[str] | None) -> None:
    """Writes to a temp file beside ``out`` and renames it, so a crash never leaves half a file."""
    with atomic_write(out, "--out") as temp:
        if fmt == "npz":
            arrays = {"embeddings": vectors, "paths": np.array(rows, dtype=str)}
            if labels is not None:
                arrays["labels"] = np.array(labels, dtype=str)
            with open(temp, "wb") as file:
                np.savez(file, **arrays)  # a file object: numpy adds no .npz suffix
        else:
            with open(temp, "w", newline="", encoding="utf-8") as file:
                writer = csv.writer(file)
                writer.writerow(["path", "label", *(f"e{i}" for i in range(vectors.shape[1]))])
                for index, row in enumerate(rows):
                    # 9 significant digits round-trip any float32 exactly.
                    values = [f"{value:.9g}" for value in vectors[index].tolist()]
                    writer.writerow([row, labels[index] if labels is not None else "", *values])
