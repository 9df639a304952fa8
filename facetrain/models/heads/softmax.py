"""The plain softmax head: the no-margin baseline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.models.head_math import check_embedding_dim, fill_rows, shard_range
from facetrain.models.heads.base import Shard


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
