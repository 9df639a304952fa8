"""Classification heads: what every head shares, and the margin heads' base class.

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

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.models.head_math import check_embedding_dim, fill_rows, put_target, shard_range

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
