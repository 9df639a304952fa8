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

from facetrain.config import Config, EvalConfig, PairsSetConfig, config_to_dict, resolve_config
from facetrain.errors import ConfigError, DataError
from facetrain.evaluation.embedding import embed_pairs_with
from facetrain.evaluation.metrics import (
    balanced_folds,
    contiguous_folds,
    equal_error_rate,
    kfold_accuracy,
    roc_auc,
    tar_at_far,
)
from facetrain.evaluation.pairs import PairList, read_pairs
from facetrain.models import ModuleEmbedder, PixelEmbedder, load_model
from facetrain.runtime import resolve_precision

# TAR is reported at these false-accept rates, keyed as the config's best_metric names them.
FAR_TARGETS = {"1e-1": 1e-1, "1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4}
BIN_FOLDS = 10  # insightface scores its .bin files with 10 contiguous folds


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
    model: PixelEmbedder,
    pairs: PairList,
    *,
    folds: int = 10,
    flip: bool = True,
    batch_size: int = 64,
    num_workers: int = 0,
    name: str | None = None,
) -> PairsReport:
    plain, fused = embed_pairs_with(model, pairs, batch_size, num_workers, flip)
    return report_pairs(pairs, plain, fused, folds, name)


@dataclass(frozen=True)
class EvalSetup:
    """What ``facetrain eval`` scores with: the model, the eval settings and its loader workers."""

    model: PixelEmbedder
    settings: EvalConfig
    num_workers: int = 0


def eval_setup(
    checkpoint: str | Path | None,
    config: Config | None,
    *,
    device: torch.device,
    overrides: list[str] | None = None,
    model: PixelEmbedder | None = None,
) -> EvalSetup:
    """A checkpoint's embedder and eval settings (from ``config`` or its own, with ``overrides``), or a
    loaded ``model`` (an export or a foreign file) with ``config``'s settings or the defaults."""
    if model is not None:
        return EvalSetup(model, (config.eval if config else EvalConfig()), config.data.num_workers if config else 0)
    if checkpoint is None:
        raise ConfigError("nothing to score: pass --checkpoint FILE or --model FILE")
    loaded = load_model(checkpoint, device)
    if config is None and overrides:
        config = resolve_config(config_to_dict(loaded.config), overrides, source=f"config inside '{checkpoint}'")
    precision = resolve_precision("auto", device)
    embedder = ModuleEmbedder(loaded.embedder, loaded.preprocess, device, precision, name=f"checkpoint '{checkpoint}'")
    return EvalSetup(embedder, (config or loaded.config).eval, loaded.config.data.num_workers)


def run_eval(
    checkpoint: str | Path | None,
    pairs: list[PairList],
    config: Config | None = None,
    *,
    device: torch.device,
    overrides: list[str] | None = None,
    folds: int | None = None,
    flip: bool | None = None,
    batch_size: int | None = None,
    model: PixelEmbedder | None = None,
    setup: EvalSetup | None = None,
    num_workers: int | None = None,
) -> list[PairsReport]:
    """``facetrain eval``: the checkpoint's embedder (or ``model``: an export or a foreign file, see
    ``facetrain.deploy.load_scorable``) on ``pairs`` (read by ``read_pairs_files``), or on a config's
    eval.sets when there are none.

    Options left as None come from ``config`` (when given) or from the config saved in the checkpoint,
    to which ``overrides`` (``key=value``) then apply; for a ``model``, from ``config`` or the defaults.
    ``setup``: what ``eval_setup`` returned already (then ``checkpoint``, ``config`` and ``model`` are
    not used); ``num_workers``: loader processes (default: the checkpoint's data.num_workers).
    """
    setup = setup or eval_setup(checkpoint, config, device=device, overrides=overrides, model=model)
    if num_workers is not None:
        setup = dataclasses.replace(setup, num_workers=num_workers)
    settings = setup.settings
    if pairs:
        pair_lists, names = pairs, [pair_list.name for pair_list in pairs]
    elif settings.sets:
        pair_lists = [load_pairs_set(spec) for spec in settings.sets]  # every file is checked before any embedding
        names = [spec.name or pair_list.name for spec, pair_list in zip(settings.sets, pair_lists, strict=True)]
    else:
        raise ConfigError(
            "nothing to evaluate: pass --pairs FILE (and --images ROOT), --suite DIR, --ijb ROOT, "
            "or a --config whose eval.sets lists pairs"
        )
    options = eval_options(setup, folds, flip, batch_size)
    return [
        evaluate_set(setup.model, pair_list, name=name, **options)
        for name, pair_list in zip(unique_names(names), pair_lists, strict=True)
    ]


def eval_options(setup: EvalSetup, folds: int | None, flip: bool | None, batch_size: int | None) -> dict[str, Any]:
    """evaluate_set's keyword options: the command line's where given, else the eval settings'."""
    settings = setup.settings
    return {
        "folds": folds or settings.folds,
        "flip": settings.flip if flip is None else flip,
        "batch_size": batch_size or settings.batch_size,
        "num_workers": setup.num_workers,
    }


def unique_names(names: list[str]) -> list[str]:
    """Set names for reports, plots and TensorBoard tags; repeats get ``_2``, ``_3``... appended."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique
