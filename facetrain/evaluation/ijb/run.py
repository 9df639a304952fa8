"""``facetrain eval --ijb ROOT``: IJB-B / IJB-C 1:1 verification and 1:N identification.

Reads the meta files first (every problem before any embedding), then gets the image features (a
model embeds the aligned loose crops, or ``--features`` gives them), pools them into templates and
scores the protocol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from facetrain.errors import ConfigError
from facetrain.evaluation.ijb import identification as ident
from facetrain.evaluation.ijb.features import embed_images, read_features, save_features
from facetrain.evaluation.ijb.protocol import Protocol
from facetrain.evaluation.ijb.templates import PoolMode, Templates, pool_templates, score_pairs
from facetrain.evaluation.metrics import auc_from_counts, roc_corners, roc_counts, tar_at_far_nearest, tar_at_far_strict
from facetrain.models import PixelEmbedder

FAR_TARGETS = {"1e-6": 1e-6, "1e-5": 1e-5, "1e-4": 1e-4, "1e-3": 1e-3, "1e-2": 1e-2, "1e-1": 1e-1}
HEADLINE_FAR = "1e-4"


@dataclass
class Verification:
    """IJB 1:1: TAR at each FAR under both rules, ROC AUC, and the counts behind them."""

    target: str
    model: str
    mode: str
    images: int
    templates: int
    pairs: int
    genuine: int
    impostor: int
    tar_at_far: dict[str, float | None]  # strict: FAR <= target (the headline)
    tar_at_far_insightface: dict[str, float | None]  # the ROC point with the nearest FAR
    roc_auc: float
    threshold: dict[str, float]  # the FAR it gives at most -> the lowest score threshold: the finest measurable
    scores: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    is_same: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0, dtype=torch.bool))

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("scores", "is_same")}
        return {"protocol": "1:1", "headline": f"TAR@FAR={HEADLINE_FAR} (strict)", **data}


@dataclass
class Identification:
    """IJB 1:N: closed-set CMC over G1 ∪ G2, and open-set TPIR at FPIR per gallery and their mean."""

    target: str
    model: str
    mode: str
    images: int
    probes: int
    gallery_templates: dict[str, int]
    probes_without_mate: int
    cmc: dict[str, float]
    tpir_at_fpir: dict[str, dict[str, float | None]]  # gallery name (and "mean") -> FPIR -> TPIR
    tpir_at_fpir_insightface: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": "1:N", **asdict(self)}


def run_ijb(
    protocol: Protocol,
    *,
    model: PixelEmbedder | None = None,
    features_file: str | Path | None = None,
    save_to: str | Path | None = None,
    mode: PoolMode = PoolMode(),
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> Verification | Identification:
    images = protocol.images
    if features_file is not None:
        features, name = read_features(features_file, len(images.names)), f"features '{features_file}'"
    elif model is not None:
        features, name = (
            embed_images(model, protocol.root / "loose_crop", images, batch_size, num_workers, progress),
            model.name,
        )
    else:
        raise ConfigError("--ijb needs a model (--checkpoint or --model) or --features FILE.npy")
    if save_to is not None:
        save_features(features, save_to)
    with tqdm(total=len(images.names), unit="img", desc="templates", disable=not progress, dynamic_ncols=True) as bar:
        templates = pool_templates(features, images.templates, images.medias, images.scores, mode, bar.update)
    described = mode.describe()
    if mode.norm and model is not None and model.normalised:
        described += " (this model's outputs have unit norm: the norm weighs every image alike)"
    if protocol.pairs is not None:
        return verification(protocol, templates, name, described, progress)
    return identification(protocol, templates, name, described)


def verification(protocol: Protocol, templates: Templates, name: str, mode: str, progress: bool) -> Verification:
    pairs = protocol.pairs
    assert pairs is not None
    with tqdm(total=len(pairs.first), unit="pair", desc="score", disable=not progress, dynamic_ncols=True) as bar:
        scores = score_pairs(templates, pairs.first, pairs.second, pairs.source, bar.update)
    is_same = torch.from_numpy(pairs.label)
    counts = roc_counts(scores, is_same)
    negatives, positives = counts[2], counts[3]
    corners = roc_corners(counts[0], counts[1])
    return Verification(
        target=protocol.target, model=name, mode=mode, images=len(protocol.images.names),
        templates=len(np.unique(np.concatenate([pairs.first, pairs.second]))), pairs=len(scores),
        genuine=positives, impostor=negatives,
        tar_at_far={key: tar_at_far_strict(*counts, far) for key, far in FAR_TARGETS.items()},
        tar_at_far_insightface={k: tar_at_far_nearest(*corners, *counts[2:], far) for k, far in FAR_TARGETS.items()},
        roc_auc=auc_from_counts(*counts), threshold=_operating_threshold(scores, is_same),
        scores=scores, is_same=is_same,
    )  # fmt: skip


def _operating_threshold(scores: torch.Tensor, is_same: torch.Tensor) -> dict[str, float]:
    """{FAR: threshold} at the finest FAR from 1e-4 up that the impostor pairs can measure (or {})."""
    for key in ("1e-4", "1e-3", "1e-2", "1e-1"):
        value = _threshold(scores, is_same, FAR_TARGETS[key])
        if value is not None:
            return {key: value}
    return {}


def _threshold(scores: torch.Tensor, is_same: torch.Tensor, far: float) -> float | None:
    """The lowest score threshold (accept >= it) whose FAR is within ``far``, or None."""
    impostors = scores[~is_same].double()
    allowed = int(len(impostors) * far + 1e-9)
    if len(impostors) * far < 1 - 1e-9:
        return None
    if allowed >= len(impostors):
        return float(impostors.min())
    bar = float(torch.topk(impostors, allowed + 1).values[-1])
    return float(np.nextafter(np.float32(bar), np.float32(np.inf)))


def identification(protocol: Protocol, templates: Templates, name: str, mode: str) -> Identification:
    probes, galleries = protocol.probes, protocol.galleries
    assert probes is not None and galleries is not None
    probe_features = templates.features[templates.rows(probes.templates, probes.source)]
    features = [templates.features[templates.rows(g.templates, g.source)] for g in galleries]
    union = ident.search(
        probe_features, probes.subjects, torch.cat(features), np.concatenate([g.subjects for g in galleries]),
        keep=ident.pooled_keep(len(probes.templates)),
    )  # fmt: skip
    names = [Path(g.source).stem.rsplit("_", 1)[-1] for g in galleries]
    per_gallery: dict[str, dict[str, float | None]] = {}
    for label, gallery, gallery_features in zip(names, galleries, features, strict=True):
        result = ident.search(probe_features, probes.subjects, gallery_features, gallery.subjects)
        per_gallery[label] = {key: ident.tpir_at_fpir(result, far) for key, far in ident.FPIR_TARGETS.items()}
    sizes = {label: len(gallery.templates) for label, gallery in zip(names, galleries, strict=True)}
    per_gallery["mean"] = {key: _mean([per_gallery[g][key] for g in names]) for key in ident.FPIR_TARGETS}
    return Identification(
        target=protocol.target, model=name, mode=mode, images=len(protocol.images.names),
        probes=len(probes.templates), gallery_templates=sizes,
        probes_without_mate=int((~union.mated).sum()),
        cmc={f"rank-{k}": value for k, value in ident.cmc(union).items()},
        tpir_at_fpir=per_gallery,
        tpir_at_fpir_insightface={key: ident.insightface_tpir(union, far) for key, far in ident.FPIR_TARGETS.items()},
    )  # fmt: skip


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]
