"""Classification heads by family: additive margins, adaptive margins and the plain softmax; the registry.

Heads see only embeddings and labels, and are dropped at export. ``base`` states the conventions
every margin head keeps (float32 math, no ``acos``, the class centres normalised as a copy).
"""

from __future__ import annotations

import math

from torch import nn

from facetrain.config import HeadConfig, head_options
from facetrain.models.head_math import safe_sine
from facetrain.models.heads.adaptive import AdaFace, CurricularFace
from facetrain.models.heads.additive import ArcFace, CombinedMargin, CosFace, SubcenterArcFace
from facetrain.models.heads.base import MarginHead, Shard
from facetrain.models.heads.softmax import Softmax

__all__ = [
    "HEADS",
    "AdaFace",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "CurricularFace",
    "MarginHead",
    "Shard",
    "Softmax",
    "SubcenterArcFace",
    "adacos_scale",
    "build_head",
    "safe_sine",
]

HEADS: dict[str, type[nn.Module]] = {
    "arcface": ArcFace,
    "cosface": CosFace,
    "combined": CombinedMargin,
    "subcenter_arcface": SubcenterArcFace,
    "curricularface": CurricularFace,
    "adaface": AdaFace,
    "softmax": Softmax,
}


def build_head(
    cfg: HeadConfig, embedding_dim: int, num_classes: int, shard: tuple[int, int] | None = None
) -> nn.Module:
    """The head named by ``cfg.type`` with its options (null ones take the head's defaults).

    ``shard = (first, end)``: only classes ``first..end-1``, initialised as that slice of the whole head.
    """
    options = head_options(cfg)
    if options.get("s") == "auto":
        options["s"] = adacos_scale(num_classes)
    return HEADS[cfg.type](embedding_dim, num_classes, **options, shard=shard)


def adacos_scale(num_classes: int) -> float:
    """AdaCos's fixed scale sqrt(2) * ln(C - 1) (Zhang et al., CVPR 2019), at least 1 (C = 2 would give 0)."""
    return max(math.sqrt(2.0) * math.log(max(num_classes - 1, 1)), 1.0)
