"""The math every classification head shares: safe angles, the ArcFace margin rule, and the pieces that
let one head be cut into per-rank slices (initialising a slice, replacing only the rows a slice owns).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from facetrain.errors import ShapeError


def safe_sine(cosine: torch.Tensor) -> torch.Tensor:
    """sin(theta) = sqrt(clamp(1 - cos^2, 0, 1)), with a finite gradient at cos = +-1.

    The inner ``where`` keeps sqrt away from 0, where its derivative is infinite; the outer
    ``where`` restores the exact value 0 there.
    """
    squared = torch.clamp(1.0 - cosine * cosine, 0.0, 1.0)
    positive = squared > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))), 0.0)


def angle(cosine: torch.Tensor) -> torch.Tensor:
    """theta in [0, pi] from cos(theta): atan2(sin, cos), finite gradient everywhere (no acos)."""
    return torch.atan2(safe_sine(cosine), cosine)


def check_embedding_dim(embeddings: torch.Tensor, class_centers: torch.Tensor) -> None:
    """Turns the ``mat1 and mat2 shapes cannot be multiplied`` failure into a message that says what to fix."""
    if embeddings.ndim != 2 or embeddings.shape[1] != class_centers.shape[1]:
        raise ShapeError(
            f"the head's class centres are {tuple(class_centers.shape)} (rows x embedding_dim) but the "
            f"embedder gives embeddings of shape {tuple(embeddings.shape)}: model.embedding_dim must equal "
            f"{class_centers.shape[1]} for this head, or start a new run"
        )


def additive_angular_margin(cosine: torch.Tensor, m: float, easy_margin: bool = False) -> torch.Tensor:
    """ArcFace's target rule: cos(theta + m), and past theta + m > pi the fallback cos(theta) - m*sin(m).

    The fallback keeps the target decreasing in theta where cos(theta + m) would turn back up.
    With ``easy_margin`` the margin applies only where cos(theta) > 0, else cos(theta) is kept.
    """
    shifted = cosine * math.cos(m) - safe_sine(cosine) * math.sin(m)  # cos(theta + m)
    if easy_margin:
        return torch.where(cosine > 0, shifted, cosine)
    return torch.where(cosine > math.cos(math.pi - m), shifted, cosine - m * math.sin(m))


INIT_CHUNK_ROWS = 65_536  # class rows drawn at a time when initialising a (slice of a) classifier


def fill_rows(
    part: torch.Tensor, total: int, start: int, draw: Callable[[torch.Tensor, torch.Generator | None], Any]
) -> None:
    """Fills ``part`` with rows ``start..start+len(part)`` of the (``total``, ...) matrix that ``draw`` fills.

    Every rank of a sharded head so holds its slice of exactly the matrix one process would hold.
    Up to ``INIT_CHUNK_ROWS`` rows it is one draw from the global RNG, as ``nn.init`` makes it.
    Above, the matrix is drawn in chunks of rows, each from its own generator seeded from the global
    RNG, so a rank draws only the chunks its slice touches. A meta tensor (shapes only) is left as it is.
    """
    if part.is_meta:
        return
    end = start + part.shape[0]
    shape, dtype, device = part.shape[1:], part.dtype, part.device
    with torch.no_grad():
        if total <= INIT_CHUNK_ROWS:
            block = torch.empty((total, *shape), dtype=dtype, device=device)
            draw(block, None)
            part.copy_(block[start:end])
            return
        seeds = torch.randint(0, 2**62, (math.ceil(total / INIT_CHUNK_ROWS),)).tolist()  # same on every rank
        for index, seed in enumerate(seeds):
            first = index * INIT_CHUNK_ROWS
            last = min(first + INIT_CHUNK_ROWS, total)
            low, high = max(first, start), min(last, end)
            if low < high:
                block = torch.empty((last - first, *shape), dtype=dtype, device=device)
                draw(block, torch.Generator(device=device).manual_seed(seed))
                part[low - start : high - start].copy_(block[low - first : high - first])


def put_target(
    base: torch.Tensor, index: torch.Tensor, target: torch.Tensor, owned: torch.Tensor | None
) -> torch.Tensor:
    """``base`` with column ``index`` of each row replaced by ``target``; only rows where ``owned`` holds.

    ``owned`` (B, 1) is None for a whole classifier; a shard of one replaces only the rows whose true
    class it holds (``index`` of the others is any valid column, left as it is).
    """
    if owned is not None:
        target = torch.where(owned, target, base.gather(1, index))
    return base.scatter(1, index, target)


def rival_cosines(scores: torch.Tensor, index: torch.Tensor, owned: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) the highest score of a class other than the true one (``index`` (N, 1), where ``owned``).

    From the top two of each row, so no (N, classes) copy is made; -1 where no other class is scored.
    """
    top = scores.detach().topk(min(2, scores.shape[1]), dim=1)
    is_true = top.indices[:, 0] == index[:, 0]
    if owned is not None:
        is_true &= owned[:, 0]
    second = top.values[:, 1] if scores.shape[1] > 1 else torch.full_like(top.values[:, 0], -1.0)
    return torch.where(is_true, second, top.values[:, 0])


def shard_range(num_classes: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    return (0, num_classes) if shard is None else shard
