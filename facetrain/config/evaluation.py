"""The ``eval`` section: the verification pairs sets and how they are scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from facetrain.config.limits import MAX_BATCH, MAX_STEPS
from facetrain.schema import option

# Metrics that can choose best.pt; each names a number of the verification report.
BEST_METRICS = ("accuracy", "roc_auc", "tar@far=1e-1", "tar@far=1e-2", "tar@far=1e-3", "tar@far=1e-4")


@dataclass(frozen=True)
class PairsSetConfig:
    pairs: str = option("", "Pairs file: LFW pairs.txt layout, a plain `path1 path2 label` list, or a .bin.")
    images: str | None = option(None, "Image root the pairs file refers to; null: the pairs file's folder.")
    format: Literal["auto", "lfw", "list", "bin"] = option("auto", "Pairs file format (auto: detected).")
    name: str | None = option(None, "Name in logs and reports; null: the file name without extension.")


@dataclass(frozen=True)
class EvalConfig:
    sets: tuple[PairsSetConfig, ...] = field(
        default=(), metadata={"help": "Verification pairs sets, evaluated during training and by `facetrain eval`."}
    )
    folds: int = option(
        10, "Folds for files that declare none (each fold keeps the same/different balance).", ge=2, le=100
    )
    flip: bool = option(True, "Flip fusion: add the embedding of the mirrored image before normalising.")
    batch_size: int = option(64, "Images per batch when embedding.", ge=1, le=MAX_BATCH)
    every_steps: int = option(
        0, "During training, also evaluate every N optimizer steps (0: epoch ends only).", ge=0, le=MAX_STEPS
    )
    best_metric: Literal[BEST_METRICS] = option(
        "accuracy", "Metric on the first set that picks best.pt (TAR@FAR where measurable)."
    )
