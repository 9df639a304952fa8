"""Verification on pairs lists, computed the way the field reports it.

Each unique image is embedded once (with its mirror image for flip fusion), pairs are scored by
cosine similarity, and accuracy is k-fold cross-validated: every fold is scored with the threshold
that is best on the other folds. ROC AUC, EER and TAR at fixed FARs come from all pairs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from facetrain.config import Config, PairsSetConfig, config_to_dict, resolve_config
from facetrain.data import BadImage, Preprocess, model_input, quiet_worker
from facetrain.errors import ConfigError, DataError
from facetrain.evaluation.metrics import (
    balanced_folds,
    contiguous_folds,
    equal_error_rate,
    kfold_accuracy,
    roc_auc,
    tar_at_far,
)
from facetrain.evaluation.pairs import PairList, read_pairs
from facetrain.models import load_model
from facetrain.runtime import Precision, autocast, resolve_precision

# TAR is reported at these false-accept rates, keyed as the config's best_metric names them.
FAR_TARGETS = {"1e-1": 1e-1, "1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4}
BIN_FOLDS = 10  # insightface scores its .bin files with 10 contiguous folds


class PairImages(Dataset):
    """Unique images of a pairs list (file paths, or encoded bytes from a .bin) as uint8 pixels."""

    def __init__(self, pairs: PairList, preprocess: Preprocess) -> None:
        self.pairs, self.preprocess = pairs, preprocess

    def __len__(self) -> int:
        return len(self.pairs.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.read(index)

    def read(self, index: int) -> torch.Tensor:
        image = self.pairs.images[index]
        if isinstance(image, bytes):
            return self.preprocess.load_pixels(f"{self.pairs.source}[image {index}]", data=image)
        return self.preprocess.load_pixels(image)

    def decode(self, index: int) -> torch.Tensor:
        try:
            return self.read(index)
        except DataError as exc:
            raise BadImage(str(exc)) from None


@torch.no_grad()
def embed_pairs_images(
    embedder: nn.Module,
    pairs: PairList,
    preprocess: Preprocess,
    device: torch.device,
    precision: Precision,
    batch_size: int = 64,
    num_workers: int = 0,
    flip: bool = True,
    part: range | None = None,
    cached: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(plain, flip-fused) L2-normalised float32 embeddings of every unique image, (N, D) each.

    Fused = normalise(embedding(image) + embedding(mirrored image)), or None without ``flip``. Both
    come from one forward pass over the batch and its mirror. ``part``: only these unique images
    (one rank's share of a multi-process evaluation). ``cached``: their uint8 pixels, decoded already.
    """
    batches: Any
    if cached is not None:
        batches = cached.split(batch_size)
    else:
        images: Dataset = PairImages(pairs, preprocess)
        batches = DataLoader(
            images if part is None else Subset(images, part), batch_size=batch_size, num_workers=num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # keeps the loader off the global RNG (training resumes exactly)
            worker_init_fn=quiet_worker,
        )  # fmt: skip
    was_training = embedder.training
    embedder.eval()
    plain, fused = [], []
    try:
        for pixels in batches:
            images = model_input(pixels, None, device, torch.preserve_format)
            batch = torch.cat([images, images.flip(-1)]) if flip else images  # (2B or B, 3, H, W)
            with autocast(device, precision):
                outputs = embedder(batch).float()
            direct = outputs[: len(images)]
            plain.append(F.normalize(direct, dim=1).cpu())
            if flip:
                fused.append(F.normalize(direct + outputs[len(images) :], dim=1).cpu())
    finally:
        embedder.train(was_training)
    if not plain:  # a rank's share of a tiny list may hold no image
        plain = fused = [torch.empty(0, getattr(embedder, "embedding_dim", 0))]
    return torch.cat(plain), torch.cat(fused) if flip else None


@dataclass
class Metrics:
    """The numbers of one embedding variant (flip-fused or plain) on one pairs list."""

    accuracy: float
    accuracy_std: float
    threshold: float
    roc_auc: float
    eer: float
    tar_at_far: dict[str, float | None]
    fold_accuracies: list[float]
    fold_thresholds: list[float]

    def value(self, name: str) -> float | None:
        """A metric by its config name (``accuracy``, ``roc_auc``, ``tar@far=1e-3``)."""
        if name.startswith("tar@far="):
            return self.tar_at_far[name.removeprefix("tar@far=")]
        return getattr(self, name)


@dataclass
class PairsReport:
    name: str
    source: str
    format: str
    pairs: int
    same: int
    different: int
    unique_images: int
    folds: int
    fold_rule: str
    flip: Metrics | None
    plain: Metrics
    # Kept for plots; left out of JSON.
    scores: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    is_same: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0, dtype=torch.bool))

    @property
    def headline(self) -> Metrics:
        """Flip fusion when computed (the field's default), else plain embeddings."""
        return self.flip if self.flip is not None else self.plain

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("scores", "is_same")}
        data["negatives"] = self.different
        return data


def pair_folds(pairs: PairList, is_same: torch.Tensor, folds: int) -> tuple[torch.Tensor, str]:
    """The fold of each pair, and how it was chosen (for the report)."""
    same = int(is_same.sum())
    if same == 0 or same == len(is_same):
        raise DataError(
            f"{pairs.source}: {same} same and {len(is_same) - same} different pairs: verification needs both kinds"
        )
    if pairs.folds is not None:
        fold_of_pair, rule = torch.tensor(pairs.folds), "as declared by the file"
    elif pairs.format == "bin":
        fold_of_pair = contiguous_folds(len(is_same), min(BIN_FOLDS, len(is_same)))
        rule = "contiguous folds, as insightface"
    else:
        fold_of_pair, rule = balanced_folds(is_same, folds), "i-th same and i-th different pair to fold i mod k"
    count = len(torch.unique(fold_of_pair))
    if count < 2:
        raise DataError(
            f"{pairs.source}: its {len(is_same)} pairs make {count} fold; k-fold accuracy needs at least 2 "
            "(add pairs, or use a file with 2 or more folds)"
        )
    return fold_of_pair, f"{count} folds, {rule}"


def score_pairs(pairs: PairList, embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair, (P,)."""
    left, right = torch.tensor(pairs.left), torch.tensor(pairs.right)
    return (embeddings[left] * embeddings[right]).sum(dim=1)


def compute_metrics(scores: torch.Tensor, is_same: torch.Tensor, folds: torch.Tensor) -> Metrics:
    kfold = kfold_accuracy(scores, is_same, folds)
    return Metrics(
        accuracy=kfold.mean,
        accuracy_std=kfold.std,
        threshold=kfold.threshold_mean,
        roc_auc=roc_auc(scores, is_same),
        eer=equal_error_rate(scores, is_same),
        tar_at_far={key: tar_at_far(scores, is_same, far) for key, far in FAR_TARGETS.items()},
        fold_accuracies=kfold.fold_accuracies,
        fold_thresholds=kfold.fold_thresholds,
    )


def report_pairs(
    pairs: PairList, plain: torch.Tensor, fused: torch.Tensor | None, folds: int, name: str | None = None
) -> PairsReport:
    is_same = torch.tensor(pairs.is_same, dtype=torch.bool)
    fold_of_pair, rule = pair_folds(pairs, is_same, folds)
    plain_scores = score_pairs(pairs, plain)
    fused_scores = score_pairs(pairs, fused) if fused is not None else None
    same = int(is_same.sum())
    return PairsReport(
        name=name or pairs.name,
        source=str(pairs.source),
        format=pairs.format,
        pairs=len(is_same),
        same=same,
        different=len(is_same) - same,
        unique_images=len(pairs.images),
        folds=int(fold_of_pair.max()) + 1 if len(fold_of_pair) else 0,
        fold_rule=rule,
        flip=compute_metrics(fused_scores, is_same, fold_of_pair) if fused_scores is not None else None,
        plain=compute_metrics(plain_scores, is_same, fold_of_pair),
        scores=fused_scores if fused_scores is not None else plain_scores,
        is_same=is_same,
    )


def load_pairs_set(spec: PairsSetConfig) -> PairList:
    return read_pairs(spec.pairs, spec.images, spec.format)


def evaluate_set(
    embedder: nn.Module,
    preprocess: Preprocess,
    pairs: PairList,
    device: torch.device,
    precision: Precision,
    *,
    folds: int = 10,
    flip: bool = True,
    batch_size: int = 64,
    num_workers: int = 0,
    name: str | None = None,
) -> PairsReport:
    plain, fused = embed_pairs_images(embedder, pairs, preprocess, device, precision, batch_size, num_workers, flip)
    return report_pairs(pairs, plain, fused, folds, name)


def run_eval(
    checkpoint: str | Path,
    pairs: list[PairList],
    config: Config | None = None,
    *,
    device: torch.device,
    overrides: list[str] | None = None,
    folds: int | None = None,
    flip: bool | None = None,
    batch_size: int | None = None,
) -> list[PairsReport]:
    """``facetrain eval``: the checkpoint's embedder on ``pairs`` (read by ``read_pairs_files``), or on a
    config's eval.sets when there are none.

    Options left as None come from ``config`` (when given) or from the config saved in the checkpoint,
    to which ``overrides`` (``key=value``) then apply.
    """
    model = load_model(checkpoint, device)
    if config is None and overrides:
        config = resolve_config(config_to_dict(model.config), overrides, source=f"config inside '{checkpoint}'")
    settings = (config or model.config).eval
    if pairs:
        pair_lists, names = pairs, [pair_list.name for pair_list in pairs]
    elif settings.sets:
        pair_lists = [load_pairs_set(spec) for spec in settings.sets]  # every file is checked before any embedding
        names = [spec.name or pair_list.name for spec, pair_list in zip(settings.sets, pair_lists, strict=True)]
    else:
        raise ConfigError(
            "nothing to evaluate: pass --pairs FILE (and --images ROOT), or a --config whose eval.sets lists pairs"
        )
    precision = resolve_precision("auto", device)
    options = {
        "folds": folds or settings.folds,
        "flip": settings.flip if flip is None else flip,
        "batch_size": batch_size or settings.batch_size,
        "num_workers": model.config.data.num_workers,
    }
    return [
        evaluate_set(model.embedder, model.preprocess, pair_list, device, precision, name=name, **options)
        for name, pair_list in zip(unique_names(names), pair_lists, strict=True)
    ]


def unique_names(names: list[str]) -> list[str]:
    """Set names for reports, plots and TensorBoard tags; repeats get ``_2``, ``_3``... appended."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique
