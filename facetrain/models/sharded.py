"""The classifier cut across ranks (model parallel), with Partial FC sampling.

Rank r of W holds the contiguous classes ``split(C, r, W)`` of any head. A step gathers every
rank's embeddings (the gradient flows back to their owners), scores them against the local slice
only, puts the margin on the rows whose true class this rank holds, and computes the softmax
cross-entropy from three all-reduced pieces: the row maximum, the sum of exponentials and the
true-class logit. No rank ever holds the C-wide logits. At W = 1 it is the whole head, which is how
``head.sample_rate < 1`` runs on one process.

Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW
2021): with ``sample_rate < 1`` each rank scores, per step, every class of its slice that is a
true class somewhere in the global batch, plus randomly chosen others, ``ceil(sample_rate * slice)``
in all (more when the batch holds more positives). Only those rows get logits and gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from facetrain import distributed
from facetrain.config import HeadConfig
from facetrain.models.head_math import rival_cosines
from facetrain.models.heads import build_head

# Parameters and buffers whose first dimension is one row per class (per sub-centre): cut across ranks.
ROW_KEYS = ("class_centers", "classifier.weight", "classifier.bias")


class ShardedHead(nn.Module):
    """This rank's slice of the head named by ``cfg``; ``forward`` returns (loss, correct count, angles)."""

    def __init__(self, cfg: HeadConfig, embedding_dim: int, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.total_classes, self.seed = num_classes, seed
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.first, self.end = distributed.split(num_classes, self.rank, self.world)
        self.head = build_head(cfg, embedding_dim, num_classes, shard=(self.first, self.end))
        self.sample_rate = cfg.sample_rate
        self.rows_per_class = getattr(self.head, "centers_per_class", 1)

    @property
    def local_classes(self) -> int:
        return self.end - self.first

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, key: int = 0, measure: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, D) embeddings and (B,) labels of this rank -> (mean loss over the global batch, correct
        count, and with ``measure`` the (2, global batch) scores of the true class and of the best other
        scored class, the same on every rank; else None).

        ``key`` numbers the micro-batch (unique within a run), so the sampled classes are a function
        of (seed, key, rank) and a resumed run draws the same ones.
        """
        # float32 before the exchange: the margin math is float32 anyway, and so the summed gradients stay.
        wide = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
        everyone = distributed.gather_with_grad(wide, grad_scale=self.world)  # DDP averages: undo it
        local = distributed.all_gather(labels) - self.first
        owned = (local >= 0) & (local < self.local_classes)
        classes = None
        if self.training and self.sample_rate < 1.0:
            classes, local = self.sample(local, owned, key)
        index = torch.where(owned, local, 0).view(-1, 1)
        owned = owned.view(-1, 1)
        scores = self.head.scores(everyone, classes)
        with torch.autocast(everyone.device.type, enabled=False):
            logits = self.head.logits(scores, index, everyone.to(scores.dtype), owned) * self.head.scale
        truth, best = true_and_best(scores.detach(), index, owned)
        angles = None
        if measure:
            rival = distributed.all_reduce(rival_cosines(scores, index, owned).clone(), "max")
            angles = torch.stack([truth[:, 0], rival])
        return cross_entropy(logits, index, owned), (truth >= best).sum(), angles

    def sample(self, local: torch.Tensor, owned: torch.Tensor, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted local classes to score, each label's position among them) for one micro-batch."""
        positives = torch.unique(local[owned])
        keep = max(math.ceil(self.sample_rate * self.local_classes), positives.numel())
        if keep >= self.local_classes:
            classes = torch.arange(self.local_classes, device=local.device)
        else:
            generator = torch.Generator(device=local.device)
            generator.manual_seed((self.seed * 1_000_003 + key) * 4099 + self.rank)
            priority = torch.rand(self.local_classes, generator=generator, device=local.device)
            priority[positives] = 2.0  # above any random draw: every positive is kept
            classes = priority.topk(keep).indices.sort().values
        position = torch.searchsorted(classes, local.clamp(0, self.local_classes - 1))
        return classes, position.clamp(max=classes.numel() - 1)

    # ------------------------------------------------------------------ checkpoints
    def row_counts(self) -> list[int]:
        """Rows of a row-sharded tensor on each rank, in rank order."""
        return [size * self.rows_per_class for size in distributed.piece_sizes(self.total_classes, self.world)]

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The whole head's state dict (the replicated head's keys) on the main rank; None elsewhere.

        Every rank must call it (it gathers the slices).
        """
        full: dict[str, Any] = {}
        for name, tensor in self.head.state_dict().items():
            if name in ROW_KEYS:
                full[name] = distributed.gather_rows_to_main(tensor, self.row_counts())
            else:
                full[name] = tensor.detach().cpu()
        return full if distributed.is_main() else None

    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        """Loads this rank's slice of a whole head's state dict (written at any world size)."""
        start, end = self.row_range()
        mine = {name: value[start:end] if name in ROW_KEYS else value for name, value in state.items()}
        self.head.load_state_dict(mine)

    def row_range(self) -> tuple[int, int]:
        return self.first * self.rows_per_class, self.end * self.rows_per_class


def cross_entropy(logits: torch.Tensor, index: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy over rows whose columns are spread across ranks.

    ``logits`` (N, S) are this rank's columns; ``index`` (N, 1) the true column where ``owned``. The
    row maximum is all-reduced (a constant for the gradient), the sum of exponentials and the true
    logit are summed across ranks with a gradient path back to each rank's own columns.
    """
    with torch.no_grad():
        top = distributed.all_reduce(logits.max(dim=1, keepdim=True).values.clone(), "max")
    shifted = logits - top
    total = distributed.sum_across(shifted.exp().sum(dim=1, keepdim=True))
    true_logit = distributed.sum_across(torch.where(owned, shifted.gather(1, index), 0.0))
    return (total.log() - true_logit).mean()


@torch.no_grad()
def true_and_best(scores: torch.Tensor, index: torch.Tensor, owned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1) each row's true-class score and its best score over every rank's (sampled) classes.

    A row is correct where the first is at least the second (a tie counts as correct).
    """
    best = distributed.all_reduce(scores.max(dim=1, keepdim=True).values.clone(), "max")
    truth = distributed.all_reduce(torch.where(owned, scores.gather(1, index), 0.0))
    return truth, best
