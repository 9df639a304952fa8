"""Evaluation: pairs files, verification metrics, checkpoint scoring, reports and plots."""

from facetrain.evaluation.evaluate import (
    FAR_TARGETS,
    PairsReport,
    evaluate_set,
    load_model,
    load_pairs_set,
    load_weights,
    run_eval,
    unique_names,
)
from facetrain.evaluation.pairgen import write_pairs_file
from facetrain.evaluation.pairs import PairList, read_pairs
from facetrain.evaluation.plots import verification_figure
from facetrain.evaluation.report import format_report, write_json, write_plots
from facetrain.evaluation.verification import holdout_verification

__all__ = [
    "FAR_TARGETS",
    "PairList",
    "PairsReport",
    "evaluate_set",
    "format_report",
    "holdout_verification",
    "load_model",
    "load_pairs_set",
    "load_weights",
    "read_pairs",
    "run_eval",
    "unique_names",
    "verification_figure",
    "write_json",
    "write_pairs_file",
    "write_plots",
]
