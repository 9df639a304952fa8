import pytest
import torch

from facetrain.evaluation.metrics import all_pairs, best_threshold, roc_auc


def test_best_threshold_hand_case():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    same = torch.tensor([True, True, False, True, False, False])
    result = best_threshold(scores, same)
    # Cut at 0.75 (2 + 3 correct) and at 0.5 (3 + 2 correct) tie at 5/6; the lower cut wins first.
    assert result.accuracy == pytest.approx(5 / 6)
    assert result.threshold in (pytest.approx(0.75), pytest.approx(0.5))
    predicted = scores >= result.threshold
    assert (predicted == same).float().mean().item() == pytest.approx(5 / 6)


def test_best_threshold_perfect_and_ties():
    assert best_threshold(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([False, False, True, True])).accuracy == 1
    # Equal scores with different labels cannot be split by any threshold.
    tied = best_threshold(torch.tensor([0.5, 0.5]), torch.tensor([True, False]))
    assert tied.accuracy == pytest.approx(0.5)


def test_roc_auc_hand_case():
    scores = torch.tensor([0.9, 0.7, 0.6, 0.4])
    same = torch.tensor([True, False, True, False])
    # Genuine-over-impostor pairs: (0.9>0.7), (0.9>0.4), (0.6>0.4) win; (0.6<0.7) loses -> 3/4.
    assert roc_auc(scores, same) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == pytest.approx(0.5)


def test_all_pairs_counts_and_scores():
    embeddings = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    scores, same = all_pairs(embeddings, torch.tensor([0, 0, 1]))
    assert scores.tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert same.tolist() == [True, False, False]


def test_all_pairs_matches_a_direct_loop():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(9, 5, generator=generator), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4])
    scores, same = all_pairs(embeddings, labels)
    expected = [
        (float(embeddings[i] @ embeddings[j]), bool(labels[i] == labels[j])) for i in range(9) for j in range(i + 1, 9)
    ]
    assert scores.tolist() == pytest.approx([score for score, _ in expected], abs=1e-6)
    assert same.tolist() == [flag for _, flag in expected]


# ---------------------------------------------------------------- ROC, EER, TAR@FAR, k-fold
from facetrain.evaluation.metrics import (  # noqa: E402
    balanced_folds,
    contiguous_folds,
    equal_error_rate,
    kfold_accuracy,
    roc_curve,
    tar_at_far,
)

SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
SAME = torch.tensor([True, True, False, True, False, False])


def test_roc_curve_hand_case():
    far, tar, thresholds = roc_curve(SCORES, SAME)
    assert far.tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert tar.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert thresholds[0] == float("inf") and thresholds[1:].tolist() == pytest.approx(SCORES.tolist())


def test_equal_error_rate_hand_cases():
    # At threshold 0.7: FAR 1/3 (0.7 accepted), FRR 1/3 (0.6 rejected) -> EER 1/3.
    assert equal_error_rate(SCORES, SAME) == pytest.approx(1 / 3)
    separable = torch.tensor([0.9, 0.8, 0.2, 0.1])
    assert equal_error_rate(separable, torch.tensor([True, True, False, False])) == pytest.approx(0.0)
    # Fully inverted scores: every threshold errs on one side or the other -> EER 1.
    assert equal_error_rate(separable, torch.tensor([False, False, True, True])) == pytest.approx(1.0)


def test_tar_at_far_hand_case_and_too_few_negatives():
    assert tar_at_far(SCORES, SAME, 0.34) == pytest.approx(1.0)  # one false accept of 3 allowed
    # 3 negatives cannot measure FAR = 0.1 (it would need at least 10).
    assert tar_at_far(SCORES, SAME, 0.1) is None
    # 10 negatives at 0.0 .. 0.9; genuine 0.95, 0.85, 0.5. FAR <= 0.1 allows one false accept (0.9),
    # so the threshold can drop to 0.85 and accept two of three genuine pairs.
    negatives = torch.arange(10) / 10
    scores = torch.cat([negatives, torch.tensor([0.95, 0.85, 0.5])])
    same = torch.tensor([False] * 10 + [True] * 3)
    assert tar_at_far(scores, same, 0.1) == pytest.approx(2 / 3)
    scores = torch.linspace(0, 1, 200)
    same = torch.arange(200) >= 100  # 100 negatives, perfectly separated
    assert tar_at_far(scores, same, 1e-2) == pytest.approx(1.0)
    assert tar_at_far(scores, same, 1e-3) is None


def test_kfold_threshold_comes_from_the_other_folds():
    # Fold 0 alone would pick a threshold near 0.5; folds 1 and 2 both separate at ~0.75.
    scores = torch.tensor([0.55, 0.45, 0.9, 0.6, 0.8, 0.7])
    same = torch.tensor([True, False, True, False, True, False])
    folds = torch.tensor([0, 0, 1, 1, 2, 2])
    result = kfold_accuracy(scores, same, folds)
    # Fold 0's own best threshold (0.5) would score it 100%; the one from folds 1 and 2 (0.75) rejects 0.55.
    assert result.fold_thresholds[0] == pytest.approx(0.75)
    assert result.fold_accuracies[0] == pytest.approx(0.5)
    # Folds 1 and 2: the other folds tie between cuts 0.5 and 0.75; the lower cut (0.5) is taken.
    assert result.fold_thresholds[1:] == pytest.approx([0.5, 0.5])
    assert result.mean == pytest.approx(0.5) and result.std == pytest.approx(0.0)
    assert result.threshold_mean == pytest.approx((0.75 + 0.5 + 0.5) / 3)


def test_balanced_and_contiguous_folds():
    # View-1 layout: all same pairs first, then all different pairs.
    same = torch.tensor([True] * 6 + [False] * 6)
    folds = balanced_folds(same, 3)
    for fold in range(3):
        members = same[folds == fold]
        assert int(members.sum()) == 2 and len(members) == 4
    assert contiguous_folds(23, 10).bincount().tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert contiguous_folds(23, 10).tolist() == sorted(contiguous_folds(23, 10).tolist())


def _reference_lfw_accuracy(scores, same, folds, step: float = 1e-4) -> float:
    """An independent implementation of the standard protocol: a threshold grid per fold (numpy)."""
    import numpy as np

    scores, same, folds = scores.numpy().astype(np.float64), same.numpy(), folds.numpy()
    grid = np.arange(-1.0, 1.0 + step, step)
    accuracies = []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        train_acc = [np.mean((scores[train] >= t) == same[train]) for t in grid]
        best = grid[int(np.argmax(train_acc))]
        accuracies.append(np.mean((scores[test] >= best) == same[test]))
    return float(np.mean(accuracies))


def test_kfold_matches_an_independent_implementation():
    generator = torch.Generator().manual_seed(1)
    same = torch.tensor(([True] * 300 + [False] * 300) * 10)  # LFW View 2 layout
    scores = torch.where(same, 0.45, 0.1) + 0.15 * torch.randn(6000, generator=generator)
    scores = scores.clamp(-1, 1)
    folds = torch.arange(6000) // 600
    ours = kfold_accuracy(scores, same, folds).mean
    assert 0.85 < ours < 0.99
    assert abs(ours - _reference_lfw_accuracy(scores, same, folds)) < 0.001
