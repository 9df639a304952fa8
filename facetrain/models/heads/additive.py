"""The additive-margin heads: ArcFace, CosFace, the combined margin and Sub-center ArcFace.

Each changes only the true class's logit, by a fixed rule of its cosine (see ``base`` for the
conventions every margin head keeps).
"""

from __future__ import annotations

import math

import torch

from facetrain.models.head_math import additive_angular_margin, angle
from facetrain.models.heads.base import MarginHead, Shard


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
