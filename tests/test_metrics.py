import pytest
import torch

from facetrain.metrics import all_pairs, best_threshold, roc_auc


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
