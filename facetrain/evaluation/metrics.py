"""Verification metrics on similarity scores. Pure tensor functions, no model code."""

from __future__ import annotations

import math
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
    return auc_from_counts(*roc_counts(scores, is_same))


def roc_curve(scores: torch.Tensor, is_same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """False-accept rate, true-accept rate and threshold at every distinct score, strictest first.

    Point k accepts ("same") every pair whose score is >= thresholds[k]. The first point (threshold
    +inf) accepts nothing, so the curve runs from (0, 0) to (1, 1).
    """
    false_accepts, true_accepts, thresholds, negatives, positives = _roc_points(scores, is_same)
    return false_accepts.double() / max(negatives, 1), true_accepts.double() / max(positives, 1), thresholds


def equal_error_rate(scores: torch.Tensor, is_same: torch.Tensor) -> float:
    """The error rate where the false-accept rate equals the false-reject rate (linear interpolation)."""
    far, tar, _ = roc_curve(scores, is_same)
    frr = 1.0 - tar
    gap = far - frr  # rises from -1 to +1 along the curve
    k = int(torch.nonzero(gap >= 0)[0])
    if k == 0 or gap[k] == 0:
        return float(far[k])
    # Interpolate between points k-1 and k, where the sign of (far - frr) changes.
    weight = float(-gap[k - 1] / (gap[k] - gap[k - 1]))
    return float(far[k - 1] + weight * (far[k] - far[k - 1]))


def tar_at_far(scores: torch.Tensor, is_same: torch.Tensor, target_far: float) -> float | None:
    """Highest true-accept rate whose false-accept rate is <= ``target_far``.

    None when there are too few negative pairs to measure that FAR (fewer than 1 / target_far).
    """
    return tar_at_far_strict(*roc_counts(scores, is_same), target_far)


@dataclass(frozen=True)
class KFoldResult:
    mean: float
    std: float
    threshold_mean: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]


def kfold_accuracy(scores: torch.Tensor, is_same: torch.Tensor, folds: torch.Tensor) -> KFoldResult:
    """Cross-validated accuracy: each fold is scored with the threshold that is best on the other folds."""
    accuracies, thresholds = [], []
    for fold in torch.unique(folds).tolist():
        test = folds == fold
        chosen = best_threshold(scores[~test], is_same[~test]).threshold
        predicted = scores[test] >= chosen
        accuracies.append(float((predicted == is_same[test]).double().mean()))
        thresholds.append(chosen)
    values = torch.tensor(accuracies, dtype=torch.float64)
    std = float(values.std(unbiased=False)) if len(accuracies) > 1 else 0.0
    return KFoldResult(float(values.mean()), std, sum(thresholds) / len(thresholds), accuracies, thresholds)


def balanced_folds(is_same: torch.Tensor, k: int) -> torch.Tensor:
    """Fold of each pair: the i-th same pair and the i-th different pair go to fold ``i mod k``."""
    folds = torch.empty(len(is_same), dtype=torch.long)
    for flag in (True, False):
        positions = torch.nonzero(is_same == flag).flatten()
        folds[positions] = torch.arange(len(positions)) % k
    return folds


def contiguous_folds(count: int, k: int) -> torch.Tensor:
    """k consecutive blocks, the first ``count % k`` one pair longer (scikit-learn's KFold without shuffle)."""
    sizes = [count // k + (1 if i < count % k else 0) for i in range(k)]
    return torch.repeat_interleave(torch.arange(k), torch.tensor(sizes))


def roc_counts(scores: torch.Tensor, is_same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(false accepts, true accepts) at every distinct score, strictest first, after a (0, 0) point,
    as int64 counts; and the numbers of negative and positive pairs."""
    false_accepts, true_accepts, _, negatives, positives = _roc_points(scores, is_same)
    return false_accepts, true_accepts, negatives, positives


def _roc_points(
    scores: torch.Tensor, is_same: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """False and true accepts (int64 counts) and the threshold at every distinct score, strictest first,
    after a (0, 0) point at threshold +inf; and the numbers of negative and positive pairs."""
    positives = int(is_same.sum())
    negatives = len(is_same) - positives
    order = torch.argsort(scores.double(), descending=True)
    sorted_scores, sorted_same = scores.double()[order], is_same[order]
    true_accepts = sorted_same.long().cumsum(0)
    false_accepts = torch.arange(1, len(scores) + 1) - true_accepts
    # Keep the last position of each run of equal scores: a threshold accepts all of them or none.
    last_of_run = torch.ones(len(scores), dtype=torch.bool)
    last_of_run[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    zero = torch.zeros(1, dtype=torch.long)
    thresholds = torch.cat([torch.tensor([float("inf")], dtype=torch.float64), sorted_scores[last_of_run]])
    return (
        torch.cat([zero, false_accepts[last_of_run]]),
        torch.cat([zero, true_accepts[last_of_run]]),
        thresholds,
        negatives,
        positives,
    )


def tar_at_far_strict(false_accepts: torch.Tensor, true_accepts: torch.Tensor, negatives: int, positives: int,
                      target_far: float) -> float | None:  # fmt: skip
    """The highest TAR whose FAR does not exceed ``target_far``; None with fewer than 1 / target negatives."""
    if negatives * target_far < 1.0 - 1e-9 or positives == 0:
        return None
    allowed = false_accepts <= math.floor(negatives * target_far + 1e-9)
    return float(true_accepts[allowed].max()) / positives


def roc_corners(false_accepts: torch.Tensor, true_accepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The points of scikit-learn's ``roc_curve`` (collinear interior points dropped; (0, 0) first),
    which insightface's IJB rule picks from."""
    fp, tp = false_accepts[1:], true_accepts[1:]
    keep = torch.ones(len(fp), dtype=torch.bool)
    if len(fp) > 2:
        keep[1:-1] = ((fp[2:] - 2 * fp[1:-1] + fp[:-2]) != 0) | ((tp[2:] - 2 * tp[1:-1] + tp[:-2]) != 0)
    return torch.cat([fp.new_zeros(1), fp[keep]]), torch.cat([tp.new_zeros(1), tp[keep]])


def tar_at_far_nearest(corner_false: torch.Tensor, corner_true: torch.Tensor, negatives: int, positives: int,
                       target_far: float) -> float | None:  # fmt: skip
    """insightface's IJB rule: the TAR of the ROC point (of ``roc_corners``) whose FAR is nearest
    ``target_far``, which may exceed it; of two equally near, the one with the higher FAR, as its
    search over the reversed curve picks."""
    if negatives == 0 or positives == 0:
        return None
    distance = (corner_false.double() / negatives - target_far).abs()
    nearest = int(torch.nonzero(distance == distance.min()).max())
    return float(corner_true[nearest]) / positives


def auc_from_counts(false_accepts: torch.Tensor, true_accepts: torch.Tensor, negatives: int, positives: int) -> float:
    """ROC AUC from ``roc_counts`` (the trapezoid rule over every distinct score: ties count half,
    as in ``roc_auc``), without sorting the scores again."""
    if negatives == 0 or positives == 0:
        return float("nan")
    widths = (false_accepts[1:] - false_accepts[:-1]).double()
    heights = (true_accepts[1:] + true_accepts[:-1]).double() / 2
    return float((widths * heights).sum()) / (negatives * positives)
