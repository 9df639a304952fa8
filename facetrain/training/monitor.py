"""Verification during training: configured pairs sets, else all pairs of the held-out identities.

In a multi-process run every rank embeds its own share of the unique images; the main rank gathers
them, computes the metrics and logs them, and every rank receives the numbers that decide best.pt.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from facetrain import distributed
from facetrain.config import Config
from facetrain.data import CachePlan, FaceDataset, Preprocess, decode_into, eval_loader, private_pixels
from facetrain.errors import ConfigError
from facetrain.evaluation import (
    FAR_TARGETS,
    PairImages,
    PairList,
    PairsReport,
    embed_loader,
    embed_pairs_images,
    format_report,
    format_suite,
    holdout_metrics,
    load_pairs_set,
    mean_accuracy,
    report_pairs,
    unique_names,
    verification_figure,
)
from facetrain.runtime import Precision
from facetrain.training.tracking import TensorBoard

log = logging.getLogger("facetrain")


@dataclass
class Evaluation:
    """One verification pass: a headline number for people, and the value that picks best.pt."""

    label: str
    value: float
    detail: str
    best_value: float | None
    reports: list[PairsReport] = field(default_factory=list)


class Monitor:
    def __init__(
        self, config: Config, held_out: FaceDataset | None, device: torch.device, precision: Precision,
        tensorboard: TensorBoard,
    ) -> None:  # fmt: skip
        self.config, self.device, self.precision, self.tensorboard = config, device, precision, tensorboard
        self.preprocess = Preprocess.from_config(config.data)
        # Parse every pairs file now, so a bad file fails before training starts.
        pair_lists = [load_pairs_set(spec) for spec in config.eval.sets]
        names = unique_names(
            [spec.name or pairs.name for spec, pairs in zip(config.eval.sets, pair_lists, strict=True)]
        )
        self.sets = list(zip(names, pair_lists, strict=True))
        if self.sets:
            _check_best_metric(config.eval.best_metric, pair_lists[0])
        self.cached: dict[str, torch.Tensor] = {}  # uint8 pixels of this rank's share, by set name
        self.held_out, self.holdout_loader, self.holdout_size = held_out, None, 0
        self.holdout_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # cached
        if held_out is not None and not self.sets:
            pin = device.type == "cuda"
            self.holdout_size = len(held_out)
            share = Subset(held_out, _share(len(held_out)))
            self.holdout_loader = eval_loader(share, config.eval.batch_size, config.data.num_workers, pin)

    def cache(self, plan: CachePlan, progress: bool) -> None:
        """Decodes this rank's share of the verification images once, if ``plan`` takes them (every rank calls it)."""
        size, workers = self.preprocess.image_size, self.config.data.num_workers
        for name, pairs in self.sets:
            if plan.take(f"verification images of eval set '{name}'", len(pairs.images), size):
                share = _share(len(pairs.images))
                self.cached[name] = _decoded(PairImages(pairs, self.preprocess), share, workers, f"caching {name}",
                                             progress)  # fmt: skip
        held_out = self.held_out
        if held_out is None or self.holdout_loader is None:
            return
        if plan.take("held-out identities' images", self.holdout_size, size):
            share = _share(self.holdout_size)
            pixels = _decoded(held_out, share, workers, "caching held-out images", progress)
            labels = torch.tensor(held_out.labels[share.start : share.stop], dtype=torch.int64)
            batch = self.config.eval.batch_size
            self.holdout_batches = list(zip(pixels.split(batch), labels.split(batch), strict=True))

    @property
    def active(self) -> bool:
        return bool(self.sets) or self.holdout_loader is not None

    def evaluate(self, embedder: nn.Module, step: int) -> Evaluation:
        """Every rank calls it; the main rank's result holds the reports, the others' only the numbers."""
        evaluation = self._evaluate_sets(embedder, step) if self.sets else self._evaluate_holdout(embedder, step)
        if distributed.world_size() == 1:
            return evaluation  # type: ignore[return-value]
        shared = distributed.broadcast_object(
            None if evaluation is None else dataclasses.replace(evaluation, reports=[])
        )
        return evaluation if evaluation is not None else shared

    def _evaluate_sets(self, embedder: nn.Module, step: int) -> Evaluation | None:
        cfg = self.config.eval
        reports = []
        for name, pairs in self.sets:
            plain, fused = embed_pairs_images(
                embedder, pairs, self.preprocess, self.device, self.precision, cfg.batch_size,
                self.config.data.num_workers, cfg.flip, part=_share(len(pairs.images)), cached=self.cached.get(name),
            )  # fmt: skip
            plain, fused = _join(plain, len(pairs.images)), _join(fused, len(pairs.images))
            if plain is not None:
                reports.append(report_pairs(pairs, plain, fused, cfg.folds, name))
        if not distributed.is_main():
            return None
        for report in reports:
            self._log_report(report, step)
        if len(reports) >= 2:
            self._log_suite(reports, step)
        first = reports[0]
        return Evaluation(
            label=f"{first.name} {first.folds}-fold accuracy",
            value=first.headline.accuracy,
            detail=", ".join(_brief(report) for report in reports),
            best_value=first.headline.value(cfg.best_metric),
            reports=reports,
        )

    def _evaluate_holdout(self, embedder: nn.Module, step: int) -> Evaluation | None:
        batches = self.holdout_batches if self.holdout_batches is not None else self.holdout_loader
        embeddings, labels = embed_loader(embedder, batches, self.device, self.precision)
        embeddings, labels = _join(embeddings, self.holdout_size), _join(labels, self.holdout_size)
        if embeddings is None or labels is None:
            return None
        result = holdout_metrics(embeddings, labels)
        self.tensorboard.scalars({"holdout/accuracy": result.accuracy, "holdout/roc_auc": result.auc}, step)
        best = {"accuracy": result.accuracy, "roc_auc": result.auc}.get(self.config.eval.best_metric)
        return Evaluation("held-out all-pairs accuracy", result.accuracy, result.summary(), best)

    def _log_report(self, report: PairsReport, step: int) -> None:
        metrics = report.headline
        values = {
            f"eval/{report.name}/accuracy": metrics.accuracy,
            f"eval/{report.name}/roc_auc": metrics.roc_auc,
            f"eval/{report.name}/eer": metrics.eer,
        }
        values.update(
            {f"eval/{report.name}/tar@far={far}": tar for far, tar in metrics.tar_at_far.items() if tar is not None}
        )
        self.tensorboard.scalars(values, step)
        title = f"{report.name} at step {step}: accuracy {metrics.accuracy:.4f}"
        figure = verification_figure(report.scores, report.is_same, metrics.threshold, title)
        self.tensorboard.figure(f"eval/{report.name}/roc", figure, step)
        log.debug("%s", format_report(report))

    def _log_suite(self, reports: list[PairsReport], step: int) -> None:
        """All sets in one table (TensorBoard's Text tab) and their mean accuracy as a scalar."""
        table = format_suite(reports)
        # Indented four spaces, the markdown renders as a code block and keeps the columns aligned.
        self.tensorboard.text("eval/suite", "\n".join(f"    {line}" for line in table.splitlines()), step)
        self.tensorboard.scalars({"eval/suite_mean_accuracy": mean_accuracy(reports)}, step)
        log.debug("%s", table)


def _decoded(source: Any, share: range, workers: int, desc: str, progress: bool) -> torch.Tensor:
    """uint8 pixels of images ``share`` of ``source``. An image that does not decode is read again the way
    an uncached evaluation reads it: a .rec's is replaced by another of its identity, a file's stops the run."""
    pixels, error = torch.empty(0, dtype=torch.uint8), None
    try:
        pixels = private_pixels(len(share), source.preprocess.image_size)
        for index, _ in decode_into(pixels, source, share, share.start, workers, desc, progress):
            pixels[index - share.start] = source.read(index)
    except Exception as exc:  # every rank must reach the settle below
        error = exc
    distributed.settle(error)
    return pixels


def _share(count: int) -> range:
    """This rank's contiguous share of ``count`` images."""
    return range(*distributed.split(count, distributed.rank(), distributed.world_size()))


def _join(part: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """Every rank's share, in order, on the main rank (None elsewhere, or for None)."""
    if part is None:
        return None
    return distributed.gather_rows_to_main(part, distributed.piece_sizes(count, distributed.world_size()))


def _brief(report: PairsReport) -> str:
    metrics = report.headline
    return (
        f"{report.name}: accuracy {metrics.accuracy:.4f} ± {metrics.accuracy_std:.4f}, "
        f"ROC AUC {metrics.roc_auc:.4f}, EER {metrics.eer:.4f}"
    )


def _check_best_metric(metric: str, pairs: PairList) -> None:
    """A TAR@FAR that the first set cannot measure would never write best.pt: refuse it up front."""
    if not metric.startswith("tar@far="):
        return
    far = FAR_TARGETS[metric.removeprefix("tar@far=")]
    negatives = sum(1 for same in pairs.is_same if not same)
    if negatives * far < 1.0 - 1e-9:
        raise ConfigError(
            f"eval.best_metric={metric} needs at least {round(1 / far)} different pairs in eval.sets[0], "
            f"which has {negatives}: choose accuracy, roc_auc or a larger FAR"
        )
