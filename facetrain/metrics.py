"""Verification metrics on similarity scores. Pure tensor functions, no model code."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ThresholdResult:
    accuracy: float
    threshold: float


def all_pairs(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine score and same-identity flag of every unordered pair (i < j).

    Args:
        embeddings: (N, D), L2-normalised.
        labels: (N,) identity labels.
    Returns:
        scores (P,) and is_same (P,) with P = N * (N - 1) / 2.
    """
    first, second = torch.triu_indices(len(labels), len(labels), offset=1)
    similarity = embeddings @ embeddings.t()  # (N, N): memory N*N, not pairs * D
    return similarity[first, second], labels[first] == labels[second]


def best_threshold(scores: torch.Tensor, is_same: torch.Tensor) -> ThresholdResult:
    """The accuracy-maximising threshold ("same" when score >= threshold) over every cut point."""
    scores = scores.double()
    order = torch.argsort(scores)
    sorted_scores, sorted_same = scores[order], is_same[order].long()
    total = len(scores)
    # Cutting before position k predicts the k lowest as "different" and the rest as "same".
    same_above = torch.cat([sorted_same.flip(0).cumsum(0).flip(0), sorted_same.new_zeros(1)])
    diff_below = torch.cat([sorted_same.new_zeros(1), (1 - sorted_same).cumsum(0)])
    correct = same_above + diff_below  # (total + 1,)
    # A cut between two equal scores is not realisable by any threshold.
    valid = torch.ones(total + 1, dtype=torch.bool)
    valid[1:total] = sorted_scores[1:] != sorted_scores[:-1]
    correct = torch.where(valid, correct, torch.full_like(correct, -1))
    cut = int(torch.argmax(correct))
    if cut == 0:
        threshold = float(sorted_scores[0]) - 1e-6
    elif cut == total:
        threshold = float(sorted_scores[-1]) + 1e-6
    else:
        threshold = float(sorted_scores[cut - 1] + sorted_scores[cut]) / 2
    return ThresholdResult(float(correct[cut]) / total, threshold)


def roc_auc(scores: torch.Tensor, is_same: torch.Tensor) -> float:
    """Area under the ROC curve: P(genuine score > impostor score), ties counted half."""
    positives = int(is_same.sum())
    negatives = len(is_same) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = mean_rank[inverse][is_same].sum().item()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
