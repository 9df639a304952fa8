"""Margin heads. They see only embeddings and labels, and are dropped at export."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.config import HeadConfig
from facetrain.errors import ShapeError


def safe_sine(cosine: torch.Tensor) -> torch.Tensor:
    """sin(theta) = sqrt(clamp(1 - cos^2, 0, 1)), with a finite gradient at cos = +-1.

    The inner ``where`` keeps sqrt away from 0, where its derivative is infinite; the outer
    ``where`` restores the exact value 0 there.
    """
    squared = torch.clamp(1.0 - cosine * cosine, 0.0, 1.0)
    positive = squared > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))), 0.0)


def check_embedding_dim(embeddings: torch.Tensor, class_centers: torch.Tensor) -> None:
    """Turns the ``mat1 and mat2 shapes cannot be multiplied`` failure into a message that says what to fix."""
    if embeddings.ndim != 2 or embeddings.shape[1] != class_centers.shape[1]:
        raise ShapeError(
            f"the head's class centres are {tuple(class_centers.shape)} (num_classes x embedding_dim) but the "
            f"embedder gives embeddings of shape {tuple(embeddings.shape)}: model.embedding_dim must equal "
            f"{class_centers.shape[1]} for this head, or start a new run"
        )


class ArcFace(nn.Module):
    """Additive angular margin (Deng et al., "ArcFace", CVPR 2019).

    Target logit ``s * cos(theta + m)``, other logits ``s * cos(theta)``. Where ``theta + m > pi``
    (``cos theta < cos(pi - m)``) the target logit becomes ``s * (cos theta - m * sin m)``, which keeps
    it monotonic in theta; with ``easy_margin`` the margin applies only where ``cos theta > 0``.
    All cosine and margin math runs in float32, also under autocast.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float, easy_margin: bool) -> None:
        super().__init__()
        self.class_centers = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.class_centers, std=0.01)
        self.s, self.m, self.easy_margin = s, m, easy_margin
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.threshold = math.cos(math.pi - m)  # theta + m > pi  <=>  cos theta < threshold
        self.fallback = m * math.sin(m)

    @property
    def num_classes(self) -> int:
        return self.class_centers.shape[0]

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, num_classes) cosines, in float32 (at least)."""
        check_embedding_dim(embeddings, self.class_centers)
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(embeddings.device.type, enabled=False):
            unit = F.normalize(embeddings.to(dtype), dim=1)
            # normalize() returns a new tensor: the parameter itself is never modified.
            centers = F.normalize(self.class_centers.to(dtype), dim=1)
            return (unit @ centers.t()).clamp(-1.0, 1.0)

    def margin(self, target_cos: torch.Tensor) -> torch.Tensor:
        """cos(theta) of the true class -> its margin-adjusted cosine."""
        with torch.autocast(target_cos.device.type, enabled=False):
            shifted = target_cos * self.cos_m - safe_sine(target_cos) * self.sin_m  # cos(theta + m)
            if self.easy_margin:
                return torch.where(target_cos > 0, shifted, target_cos)
            return torch.where(target_cos > self.threshold, shifted, target_cos - self.fallback)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (scaled logits with the margin on the target class, plain cosines), both (B, num_classes)."""
        cosine = self.cosine(embeddings)
        index = labels.view(-1, 1)
        target = self.margin(cosine.gather(1, index))
        logits = cosine.scatter(1, index, target) * self.s
        return logits, cosine


def build_head(cfg: HeadConfig, embedding_dim: int, num_classes: int) -> nn.Module:
    heads = {"arcface": lambda: ArcFace(embedding_dim, num_classes, cfg.s, cfg.m, cfg.easy_margin)}
    return heads[cfg.type]()
