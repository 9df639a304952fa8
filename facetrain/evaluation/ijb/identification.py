"""IJB 1:N identification from template features: closed-set CMC and open-set TPIR at FPIR.

- Closed set (as insightface's script): every mixed probe searches the union of the two galleries;
  its rank is 1 + the number of other subjects' gallery templates that score at least as high as its
  best mate (a tie counts against it).
- Open set (the standard definition): probes search each gallery alone. A probe whose subject is not
  enrolled there is a non-mated search; FPIR(t) is the share of non-mated searches whose best score
  is >= t; TPIR(t) is the share of mated searches whose mate is rank 1 with a score >= t. At a
  target FPIR the threshold is the lowest that keeps FPIR within it.
- insightface's figure: over the union, every non-mate score of every probe is pooled; the threshold
  is the ceil(probes x FPIR)-th highest of them, and a probe counts when its mate's score is above it,
  whatever its rank. It is printed beside the standard one, labelled, since published tables use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

RANKS = (1, 5, 10)
FPIR_TARGETS = {"1e-2": 1e-2, "1e-1": 1e-1}
PROBE_CHUNK = 4096


@dataclass
class Search:
    """Each probe's search of one gallery: the best mate and best non-mate scores, and the rank."""

    best_mate: torch.Tensor  # (Q,) float64, -inf when the subject is not enrolled
    best_other: torch.Tensor  # (Q,) float64, best non-mate score
    rank: torch.Tensor  # (Q,) int64, rank of the best mate (0 when not enrolled)
    top_non_mates: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))  # for insightface's rule

    @property
    def mated(self) -> torch.Tensor:
        return self.rank > 0


def search(
    probes: torch.Tensor, probe_subjects: np.ndarray, gallery: torch.Tensor, gallery_subjects: np.ndarray, keep: int = 0
) -> Search:
    """Every probe (Q, D) against the gallery (G, D), in chunks; ``keep``: also return the ``keep``
    highest non-mate scores over all probes (insightface's pooled rule)."""
    gallery_ids = torch.from_numpy(np.asarray(gallery_subjects, dtype=np.int64))
    best_mate, best_other, ranks, tops = [], [], [], []
    for start in range(0, len(probes), PROBE_CHUNK):
        scores = (probes[start : start + PROBE_CHUNK] @ gallery.T).double()  # (q, G)
        subjects = torch.from_numpy(np.asarray(probe_subjects[start : start + PROBE_CHUNK], dtype=np.int64))
        mate = subjects[:, None] == gallery_ids[None, :]
        others = scores.masked_fill(mate, -math.inf)
        mate_score = scores.masked_fill(~mate, -math.inf).amax(dim=1)
        rank = 1 + (others >= mate_score[:, None]).sum(dim=1)  # a tie counts against the probe
        best_mate.append(mate_score)
        best_other.append(others.amax(dim=1))
        ranks.append(torch.where(mate.any(dim=1), rank, torch.zeros_like(rank)))
        if keep:
            flat = others[torch.isfinite(others)]
            tops.append(torch.topk(flat, min(keep, len(flat))).values)
    top = torch.topk(torch.cat(tops), min(keep, sum(len(t) for t in tops))).values if keep else torch.empty(0)
    return Search(torch.cat(best_mate), torch.cat(best_other), torch.cat(ranks), top)


def cmc(result: Search, ranks: tuple[int, ...] = RANKS) -> dict[int, float]:
    """Share of all probes whose mate is within the first k (a probe with no mate counts as a miss)."""
    return {k: float(((result.rank >= 1) & (result.rank <= k)).double().mean()) for k in ranks}


def tpir_at_fpir(result: Search, target: float) -> float | None:
    """The standard open-set rate; None with too few non-mated searches to measure ``target``."""
    non_mated = result.best_other[~result.mated]  # a non-mated search's best score is its best non-mate
    mated = result.mated
    if len(non_mated) * target < 1.0 - 1e-9 or not bool(mated.any()):
        return None
    allowed = math.floor(len(non_mated) * target + 1e-9)
    hits = mated & (result.rank == 1)
    if allowed >= len(non_mated):
        return float(hits[mated].double().mean())
    # Accept scores above the (allowed + 1)-th best non-mated score: at most `allowed` of them clear.
    bar = float(torch.sort(non_mated, descending=True).values[allowed])
    return float((hits & (result.best_mate > bar))[mated].double().mean())


def insightface_tpir(result: Search, target: float) -> float | None:
    """insightface's pooled figure (see the module docstring); needs ``search(..., keep=...)``."""
    needed = math.ceil(len(result.rank) * target)
    if needed < 1 or needed > len(result.top_non_mates):
        return None
    bar = float(result.top_non_mates[needed - 1])
    return float((result.best_mate > bar).double().mean())


def pooled_keep(probes: int, targets: dict[str, float] = FPIR_TARGETS) -> int:
    """How many top non-mate scores insightface's rule needs for the largest target."""
    return max(math.ceil(probes * far) for far in targets.values())
