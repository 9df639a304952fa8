"""Evaluation: pairs files, verification metrics, checkpoint scoring, reports and plots."""

from facetrain.evaluation.evaluate import (
    FAR_TARGETS,
    PairImages,
    PairsReport,
    embed_pairs_images,
    load_model,
    load_pairs_set,
    load_weights,
    report_pairs,
    run_eval,
    unique_names,
)
from facetrain.evaluation.pairgen import write_pairs_file
from facetrain.evaluation.pairs import PairList, read_pairs
from facetrain.evaluation.plots import verification_figure
from facetrain.evaluation.report import format_report, write_json, write_plots
from facetrain.evaluation.verification import embed_loader, holdout_metrics

__all__ = [
    "FAR_TARGETS",
    "PairImages",
    "PairList",
    "PairsReport",
    "embed_loader",
    "embed_pairs_images",
    "format_report",
    "holdout_metrics",
    "load_model",
    "load_pairs_set",
    "load_weights",
    "read_pairs",
    "report_pairs",
    "run_eval",
    "unique_names",
    "verification_figure",
    "write_json",
    "write_pairs_file",
    "write_plots",
]
