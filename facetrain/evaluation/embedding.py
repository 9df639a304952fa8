"""Embedding the images of an evaluation, with any model (see ``facetrain.models.PixelEmbedder``).

Every protocol embeds an image and, with flip fusion, its mirror in one forward pass, and adds the
two outputs before anything else happens to them (the field's "F2" mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from facetrain.data import BadImage, Preprocess, quiet_worker
from facetrain.errors import DataError
from facetrain.evaluation.pairs import PairList
from facetrain.models import ModuleEmbedder, PixelEmbedder
from facetrain.runtime import Precision


class PairImages(Dataset):
    """Unique images of a pairs list (file paths, or encoded bytes from a .bin) as uint8 pixels."""

    def __init__(self, pairs: PairList, preprocess: Preprocess) -> None:
        self.pairs, self.preprocess = pairs, preprocess

    def __len__(self) -> int:
        return len(self.pairs.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.read(index)

    def read(self, index: int) -> torch.Tensor:
        image = self.pairs.images[index]
        if isinstance(image, bytes):
            return self.preprocess.load_pixels(f"{self.pairs.source}[image {index}]", data=image)
        return self.preprocess.load_pixels(image)

    def decode(self, index: int) -> torch.Tensor:
        try:
            return self.read(index)
        except DataError as exc:
            raise BadImage(str(exc)) from None


def embed_batches(
    model: PixelEmbedder, batches: Iterable[torch.Tensor], flip: bool, on_batch: Any = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(plain, image + mirror) unnormalised float32 features of uint8 batches, (N, D) each on the CPU.

    The second is None without ``flip``. ``on_batch(count)`` is called after each batch (progress bars).
    """
    plain, fused = [], []
    for direct, both in feature_batches(model, batches, flip):
        plain.append(direct)
        if both is not None:
            fused.append(both)
        if on_batch is not None:
            on_batch(len(direct))
    if not plain:  # a rank's share of a tiny list may hold no image
        plain = fused = [torch.empty(0, getattr(model, "embedding_dim", 0) or 0)]
    return torch.cat(plain), torch.cat(fused) if flip else None


def feature_batches(
    model: PixelEmbedder, batches: Iterable[torch.Tensor], flip: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per batch: (plain, image + mirror or None) unnormalised float32 features on the CPU. One forward
    pass takes the batch and its mirror; the model is in inference mode throughout."""
    restore = model.prepare()
    try:
        with torch.no_grad():
            seen = 0
            for pixels in batches:
                pixels = pixels.to(model.device, non_blocking=True)
                outputs = model(torch.cat([pixels, pixels.flip(-1)]) if flip else pixels)
                check_output(model, outputs, len(pixels) * (2 if flip else 1))
                check_finite(model, outputs, len(pixels), seen)
                seen += len(pixels)
                direct = outputs[: len(pixels)]
                fused = (direct + outputs[len(pixels) :]).float().cpu() if flip else None
                yield direct.float().cpu(), fused
    finally:
        restore()


def check_output(model: PixelEmbedder, outputs: torch.Tensor, rows: int) -> None:
    """One line when a model's output is not one embedding per input image."""
    if outputs.dim() != 2 or outputs.shape[0] != rows:
        raise DataError(
            f"{model.name}: expected an output of shape ({rows}, D), one embedding per image, "
            f"got {tuple(outputs.shape)}: give an embedder (the network up to its embedding layer)"
        )


def check_finite(model: PixelEmbedder, outputs: torch.Tensor, images: int, seen: int) -> None:
    """One line when an embedding is NaN or infinite: no score comes of it. ``images``: this batch's images
    (the outputs may hold their mirrors after them); ``seen``: the images embedded before it."""
    finite = torch.isfinite(outputs).all(dim=1)
    if bool(finite.all()):
        return
    first = int((~finite).nonzero()[0, 0]) % images
    if isinstance(model, ModuleEmbedder):  # facetrain's own embedder: a checkpoint's, or the one in training
        fix = (
            "its weights hold NaN or infinite values, or overflowed at this precision, as in a run that "
            "diverged: lower train.lr (and keep train.grad_clip), or use an earlier checkpoint"
        )
    else:
        fix = (
            "check the model's weights, and that its input options (--input-size, --mean, --std, --channels) "
            "are the ones it was trained with"
        )
    raise DataError(
        f"{model.name} returned NaN or infinite embeddings (first for image {seen + first + 1} of this "
        f"evaluation): no score can come of them; {fix}"
    )


def embed_pairs_with(
    model: PixelEmbedder,
    pairs: PairList,
    batch_size: int = 64,
    num_workers: int = 0,
    flip: bool = True,
    part: range | None = None,
    cached: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(plain, flip-fused) L2-normalised float32 embeddings of every unique image, (N, D) each.

    Fused = normalise(embedding(image) + embedding(mirrored image)), or None without ``flip``. Both
    come from one forward pass over the batch and its mirror. ``part``: only these unique images
    (one rank's share of a multi-process evaluation). ``cached``: their uint8 pixels, decoded already.
    """
    batches: Any
    if cached is not None:
        batches = cached.split(batch_size)
    else:
        images: Dataset = PairImages(pairs, model.preprocess)
        batches = DataLoader(
            images if part is None else Subset(images, part), batch_size=batch_size, num_workers=num_workers,
            pin_memory=model.device.type == "cuda",
            generator=torch.Generator(),  # keeps the loader off the global RNG (training resumes exactly)
            worker_init_fn=quiet_worker,
        )  # fmt: skip
    plain, fused = embed_batches(model, batches, flip)
    return F.normalize(plain, dim=1), F.normalize(fused, dim=1) if fused is not None else None


def embed_pairs_images(
    embedder: nn.Module,
    pairs: PairList,
    preprocess: Preprocess,
    device: torch.device,
    precision: Precision,
    batch_size: int = 64,
    num_workers: int = 0,
    flip: bool = True,
    part: range | None = None,
    cached: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``embed_pairs_with`` for the embedder module in training (its evaluations during the run)."""
    model = ModuleEmbedder(embedder, preprocess, device, precision, name="the embedder in training")
    return embed_pairs_with(model, pairs, batch_size, num_workers, flip, part, cached)
