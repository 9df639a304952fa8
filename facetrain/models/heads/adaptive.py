"""The adaptive-margin heads: CurricularFace and AdaFace, whose logits follow running batch statistics.

The statistics are buffers, so checkpoints carry them and a resumed run goes on where it stopped.
"""

from __future__ import annotations

import math

import torch

from facetrain import distributed
from facetrain.models.head_math import additive_angular_margin, angle, put_target
from facetrain.models.heads.base import MarginHead, Shard


class CurricularFace(MarginHead):
    """Adaptive curriculum. Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep
    Face Recognition", CVPR 2020.

    True class: ArcFace's ``T = cos(theta_y + m)`` (with its fallback past pi). Another class j is
    ``cos theta_j`` if ``cos theta_j <= T``, else a hard negative, re-weighted to
    ``cos theta_j * (t + cos theta_j)``. ``T`` is the true class's final logit (after the fallback),
    as in the paper's definition; the authors' code compares with ``cos(theta_y + m)`` before the
    fallback, which differs only where ``theta_y > pi - m``. ``t`` is a running mean of the batches'
    ``cos theta_y``,
    ``t <- (1 - ema_alpha) * t + ema_alpha * mean(cos theta_y)``, starting at 0 (easy samples first)
    and updated before use in training mode only. It is a buffer, so checkpoints carry it.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float, m: float, ema_alpha: float, shard: Shard = None
    ) -> None:
        super().__init__(embedding_dim, num_classes, s, shard=shard)
        self.m, self.ema_alpha = m, ema_alpha
        self.register_buffer("t", torch.zeros(()))

    def target(self, target_cos: torch.Tensor) -> torch.Tensor:
        return additive_angular_margin(target_cos, self.margin())

    def collapsed_other(self) -> float:
        return 1.0 + float(self.t)  # every other class is a hard negative: cos * (t + cos) at cos = 1

    def logits(
        self, cosine: torch.Tensor, index: torch.Tensor, embeddings: torch.Tensor, owned: torch.Tensor | None = None
    ) -> torch.Tensor:
        target_cos = cosine.gather(1, index)
        target = self.target(target_cos)
        every_cos, threshold = target_cos.detach(), target.detach()
        if owned is not None:  # a shard: each sample's true class lives on one rank, which shares its values
            every_cos = distributed.all_reduce(torch.where(owned, every_cos, 0.0))
            threshold = distributed.all_reduce(torch.where(owned, threshold, 0.0))
        if self.training:
            with torch.no_grad():
                self.t.lerp_(every_cos.mean().to(self.t.dtype), self.ema_alpha)
        t = self.t.to(cosine.dtype)
        hard = cosine > threshold
        others = torch.where(hard, cosine * (t + cosine), cosine)
        return put_target(others, index, target, owned)


class AdaFace(MarginHead):
    """Quality-adaptive margin. Kim, Jain and Liu, "AdaFace: Quality Adaptive Margin for Face
    Recognition", CVPR 2022.

    The embedding norm ``n = clamp(||x||, 0.001, 100)`` (not differentiated) measures image quality
    against running batch statistics: ``q = clamp(h * (n - mean) / (std + 0.001), -1, 1)``. True
    class: ``cos(clamp(theta_y - m * q, 0, pi)) - (m + m * q)``; other classes ``cos theta``. So a
    low-quality image (q = -1) gets ArcFace's ``cos(theta + m)``, an average one (q = 0) CosFace's
    ``cos theta - m``, and a high-quality one (q = 1) ``cos(theta - m) - 2m``, which weights its hard
    samples more. Past the clamps (theta - m * q below 0 or above pi) the true-class logit is flat, as
    in the paper's code. ``mean`` and ``std`` start at 20 and 100, move by ``ema_alpha`` per training
    batch, and are buffers, so checkpoints carry them.
    """

    NORM_MIN, NORM_MAX, EPS = 0.001, 100.0, 0.001

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float, m: float, h: float, ema_alpha: float, shard: Shard = None
    ) -> None:
        super().__init__(embedding_dim, num_classes, s, shard=shard)
        self.m, self.h, self.ema_alpha = m, h, ema_alpha
        self.register_buffer("norm_mean", torch.tensor(20.0))
        self.register_buffer("norm_std", torch.tensor(100.0))

    def quality(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, 1) margin scaler q in [-1, 1]; updates the running statistics when training."""
        norms = embeddings.detach().norm(dim=1, keepdim=True).clamp(self.NORM_MIN, self.NORM_MAX)
        if self.training:
            with torch.no_grad():
                self.norm_mean.lerp_(norms.mean().to(self.norm_mean.dtype), self.ema_alpha)
                if norms.shape[0] > 1:  # the spread of one sample is undefined: keep the running value
                    self.norm_std.lerp_(norms.std().to(self.norm_std.dtype), self.ema_alpha)
        mean, std = self.norm_mean.to(norms.dtype), self.norm_std.to(norms.dtype)
        return (self.h * (norms - mean) / (std + self.EPS)).clamp(-1.0, 1.0)

    def logits(
        self, cosine: torch.Tensor, index: torch.Tensor, embeddings: torch.Tensor, owned: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.quality(embeddings)  # a shard sees the whole gathered batch, so its statistics match
        return put_target(cosine, index, self.target(cosine.gather(1, index), q), owned)

    def target(self, target_cos: torch.Tensor, q: torch.Tensor | float = 0.0) -> torch.Tensor:
        """The true class's logit at quality ``q`` (0: an average image, CosFace's ``cos theta - m``)."""
        m = self.margin()
        return torch.cos((angle(target_cos) - m * q).clamp(0.0, math.pi)) - (m + m * q)
