"""Classification heads: the margin family and a plain softmax baseline.

Heads see only embeddings and labels, and are dropped at export. Each returns
``(logits, scores)``: the scaled logits for cross-entropy (margin on the true class) and
margin-free class scores (cosines, or the softmax's logits) for training accuracy.

Conventions shared by the margin heads:

- The embedder hands over its *un-normalised* embedding. Margin heads L2-normalise a copy of it
  and of the class centres (the parameter itself is never modified); AdaFace also reads the
  embedding's norm. Export normalises inside the exported module, so what a service receives does
  not depend on the head.
- All cosine and margin math runs in float32 (float64 if given), with autocast disabled.
- ``theta`` is never taken with ``acos``: ``sin`` comes from a clamped ``sqrt`` whose gradient is
  finite at cos = +-1 (``safe_sine``), and ``theta = atan2(sin, cos)`` where an angle is needed.
- A zero embedding (norm 0) normalises to the zero vector: its cosine with every centre is 0, as
  if it were orthogonal to all of them (theta = pi/2). AdaFace treats its norm as the minimum 0.001.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facetrain import distributed
from facetrain.config import HeadConfig, head_options
from facetrain.models.head_math import (
    additive_angular_margin,
    angle,
    check_embedding_dim,
    fill_rows,
    put_target,
    safe_sine,  # noqa: F401  (re-exported: the heads' public math)
    shard_range,
)

Shard = tuple[int, int] | None  # (first class, end class) of a slice of the classifier


class MarginHead(nn.Module):
    """Normalised class centres and float32 cosines; subclasses say how the true class's logit changes.

    ``shard = (first, end)``: this module holds only classes ``first..end-1`` of ``num_classes``
    (one rank's slice, see ``facetrain.models.sharded``).

    ``margin_factor`` in [0, 1] is the share of the margins applied now: the trainer sets it before
    every step from the margin warm-up (``margin``). It is not state: a resumed run recomputes it
    from the step. ``MARGINS`` names the options it scales.
    """

    MARGINS: tuple[str, ...] = ("m",)
    margin_factor = 1.0

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float, centers_per_class: int = 1,
        shard: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        first, end = shard_range(num_classes, shard)
        self.class_centers = nn.Parameter(torch.empty((end - first) * centers_per_class, embedding_dim))
        fill_rows(self.class_centers, num_classes * centers_per_class, first * centers_per_class,
                  lambda block, gen: block.normal_(0.0, 0.01, generator=gen))  # fmt: skip
        self.s = s
        self.centers_per_class = centers_per_class

    @property
    def num_classes(self) -> int:
        return self.class_centers.shape[0] // self.centers_per_class

    @property
    def scale(self) -> float:
        return self.s

    def margin(self, name: str = "m") -> float:
        """Margin option ``name`` as applied now: ``margin_factor`` of the way from no margin to its value."""
        value = getattr(self, name)
        none = 1.0 if name == "m1" else 0.0  # a multiplicative margin is off at 1
        return none + self.margin_factor * (value - none)

    def collapsed_target(self) -> float:
        """The true class's unscaled logit at cos(theta) = 1: the value a collapsed head settles at."""
        return float(self.target(torch.ones(1, 1, dtype=torch.float64)))

    def collapsed_other(self) -> float:
        """Another class's unscaled logit at cos(theta) = 1."""
        return 1.0

    def center_rows(self, classes: torch.Tensor | None) -> torch.Tensor:
        """The centre rows of ``classes`` (all rows when None); a class's K sub-centres stay together."""
        if classes is None:
            return self.class_centers
        k = self.centers_per_class
        rows = classes if k == 1 else (classes[:, None] * k + torch.arange(k, device=classes.device)).flatten()
        return self.class_centers[rows]

    def center_cosine(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, rows) cosine with every centre row (of ``classes``), in float32 (at least)."""
        check_embedding_dim(embeddings, self.class_centers)
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(embeddings.device.type, enabled=False):
            unit = F.normalize(embeddings.to(dtype), dim=1)
            # normalize() returns a new tensor: the parameter itself is never modified.
            centers = F.normalize(self.center_rows(classes).to(dtype), dim=1)
            return (unit @ centers.t()).clamp(-1.0, 1.0)

    def scores(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, classes) margin-free cosines, in float32 (at least)."""
        return self.center_cosine(embeddings, classes)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scores(embeddings)

    def target(self, target_cos: torch.Tensor) -> torch.Tensor:
        """cos(theta) of the true class (B, 1) -> its margin-adjusted value."""
        raise NotImplementedError

    def logits(
        self, cosine: torch.Tensor, index: torch.Tensor, embeddings: torch.Tensor, owned: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unscaled logits: the cosines with the true class's entry replaced by ``target`` (where ``owned``)."""
        return put_target(cosine, index, self.target(cosine.gather(1, index)), owned)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (scaled logits with the margin on the true class, plain cosines), both (B, num_classes)."""
        cosine = self.scores(embeddings)
        with torch.autocast(embeddings.device.type, enabled=False):
            logits = self.logits(cosine, labels.view(-1, 1), embeddings.to(cosine.dtype))
        return logits * self.s, cosine


class ArcFace(MarginHead):
    """Additive angular margin. Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition", CVPR 2019.

    True class: ``s * cos(theta + m)``; where ``theta + m > pi`` (``cos theta < cos(pi - m)``) it is
    ``s * (cos theta - m * sin m)`` instead, which keeps it decreasing in theta. With
    ``easy_margin`` the margin applies only where ``cos theta > 0``. Other classes: ``s * cos theta``.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float, m: float, easy_margin: bool = False, shard: Shard = None
    ) -> None:
        super().__init__(embedding_dim, num_classes, s, shard=shard)
        self.m, self.easy_margin = m, easy_margin

    def target(self, target_cos: torch.Tensor) -> torch.Tensor:
        return additive_angular_margin(target_cos, self.margin(), self.easy_margin)


class CosFace(MarginHead):
    """Additive cosine margin. Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face
    Recognition", CVPR 2018 (also AM-Softmax, Wang et al., IEEE SPL 2018).

    True class: ``s * (cos theta - m)``; other classes: ``s * cos theta``. No branch points.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float, shard: Shard = None) -> None:
        super().__init__(embedding_dim, num_classes, s, shard=shard)
        self.m = m

    def target(self, target_cos: torch.Tensor) -> torch.Tensor:
        return target_cos - self.margin()


class CombinedMargin(MarginHead):
    """The combined margin of the ArcFace paper (Deng et al., CVPR 2019, eq. 4):
    true class ``s * (cos(m1 * theta + m2) - m3)``.

    (1, m, 0) is ArcFace and (1, 0, m) is CosFace, exactly. Where ``m1 * theta + m2`` passes pi:

    - ``m1 = 1``: ArcFace's fallback, ``cos theta - m2 * sin m2 - m3``.
    - ``m1 != 1`` (SphereFace-style; Liu et al., "SphereFace: Deep Hypersphere Embedding for Face
      Recognition", CVPR 2017): SphereFace's psi, generalised to the additive terms:
      ``(-1)^k * cos(m1 * theta + m2) - 2k - m3`` with ``k = floor((m1 * theta + m2) / pi)``.
      It is continuous and keeps decreasing in theta up to theta = pi.

    So past pi the rule switches between m1 = 1 exactly and any other m1 (below pi both agree).
    ``theta`` comes from ``atan2``, never ``acos``.
    """

    MARGINS = ("m1", "m2", "m3")

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float, m1: float, m2: float, m3: float, shard: Shard = None
    ) -> None:
        super().__init__(embedding_dim, num_classes, s, shard=shard)
        self.m1, self.m2, self.m3 = m1, m2, m3

    def target(self, target_cos: torch.Tensor) -> torch.Tensor:
        m1, m2, m3 = self.margin("m1"), self.margin("m2"), self.margin("m3")
        if m1 == 1.0:
            return additive_angular_margin(target_cos, m2) - m3
        phi = m1 * angle(target_cos) + m2
        k = torch.floor(phi.detach() / math.pi)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        return sign * torch.cos(phi) - 2.0 * k - m3


class SubcenterArcFace(MarginHead):
    """ArcFace over K sub-centres per class. Deng et al., "Sub-center ArcFace: Boosting Face
    Recognition by Large-scale Noisy Web Faces", ECCV 2020.

    ``cos theta_j = max_k cos(x, w_jk)``, then ArcFace's rule on the true class. A clean image sits
    near its class's dominant sub-centre; an image nearest another sub-centre is a label-noise
    suspect (see ``facetrain.diagnostics.outliers``). With K = 1 it is ArcFace exactly.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, s: float, m: float, easy_margin: bool = False, k: int = 3,
        shard: Shard = None,
    ) -> None:  # fmt: skip
        super().__init__(embedding_dim, num_classes, s, centers_per_class=k, shard=shard)
        self.m, self.easy_margin = m, easy_margin

    def subcenter_cosine(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, classes, K) cosine with every sub-centre; row ``c * K + j`` is class c's j-th."""
        cosine = self.center_cosine(embeddings, classes)
        return cosine.view(cosine.shape[0], -1, self.centers_per_class)

    def scores(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        return self.subcenter_cosine(embeddings, classes).amax(dim=2)

    def target(self, target_cos: torch.Tensor) -> torch.Tensor:
        return additive_angular_margin(target_cos, self.margin(), self.easy_margin)


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


class Softmax(nn.Module):
    """Plain linear classifier, ``logits = W x + b`` on the un-normalised embedding: the baseline that
    shows what normalisation and margins buy. No scale, no margin; math in float32 under autocast.
    Initialised as ``nn.Linear`` is (uniform in +-1/sqrt(embedding_dim)), also when sharded.
    """

    scale = 1.0

    def __init__(self, embedding_dim: int, num_classes: int, shard: Shard = None) -> None:
        super().__init__()
        first, end = shard_range(num_classes, shard)
        layer = nn.Linear(embedding_dim, end - first, device="meta")
        self.classifier = layer.to_empty(device=torch.get_default_device())  # filled below
        gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))  # nn.Linear's own rule
        bound = math.sqrt(3.0) * gain / math.sqrt(embedding_dim)
        fill_rows(
            self.classifier.weight, num_classes, first, lambda block, gen: block.uniform_(-bound, bound, generator=gen)
        )
        bias_bound = 1.0 / math.sqrt(embedding_dim)
        fill_rows(
            self.classifier.bias,
            num_classes,
            first,
            lambda block, gen: block.uniform_(-bias_bound, bias_bound, generator=gen),
        )

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def scores(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, classes) logits in float32 (at least)."""
        check_embedding_dim(embeddings, self.classifier.weight)
        weight, bias = self.classifier.weight, self.classifier.bias
        if classes is not None:
            weight, bias = weight[classes], bias[classes]
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(embeddings.device.type, enabled=False):
            return F.linear(embeddings.to(dtype), weight.to(dtype), bias.to(dtype))

    def logits(
        self, scores: torch.Tensor, index: torch.Tensor, embeddings: torch.Tensor, owned: torch.Tensor | None = None
    ) -> torch.Tensor:
        return scores

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.scores(embeddings)
        return logits, logits


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
