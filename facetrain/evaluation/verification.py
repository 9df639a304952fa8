"""Embedding a dataset and the held-out all-pairs verification check used during training."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.data import model_input
from facetrain.evaluation.metrics import all_pairs, best_threshold, roc_auc
from facetrain.runtime import Precision, autocast


@dataclass(frozen=True)
class HoldoutResult:
    accuracy: float
    threshold: float
    auc: float
    same_pairs: int
    different_pairs: int

    def summary(self) -> str:
        return (
            f"accuracy {self.accuracy:.4f} (threshold {self.threshold:.3f}), ROC AUC {self.auc:.4f}, "
            f"{self.same_pairs} same / {self.different_pairs} different pairs"
        )


@torch.no_grad()
def embed_loader(
    embedder: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised float32 embeddings (N, D) and labels (N,), on the CPU, of batches of (float images,
    or uint8 pixels, and labels)."""
    was_training = embedder.training
    embedder.eval()
    outputs, labels = [], []
    try:
        for images, batch_labels in loader:
            if images.dtype == torch.uint8:  # cached pixels: normalised on the device
                images = model_input(images, None, device, torch.preserve_format)
            with autocast(device, precision):
                embeddings = embedder(images.to(device, non_blocking=True))
            outputs.append(F.normalize(embeddings.float(), dim=1).cpu())
            labels.append(batch_labels)
    finally:
        embedder.train(was_training)
    if not outputs:  # a rank's share of a tiny set may hold no image
        return torch.empty(0, getattr(embedder, "embedding_dim", 0)), torch.empty(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(labels)


def holdout_metrics(embeddings: torch.Tensor, labels: torch.Tensor) -> HoldoutResult:
    """Best-threshold accuracy over all same and different pairs of the held-out identities' embeddings
    (gathered from every rank in a multi-process run)."""
    scores, is_same = all_pairs(embeddings, labels)
    best = best_threshold(scores, is_same)
    same = int(is_same.sum())
    return HoldoutResult(best.accuracy, best.threshold, roc_auc(scores, is_same), same, len(is_same) - same)
