"""Diagnostics: the pre-flight check of shapes and data, and the noisy-label (outlier) report."""

from facetrain.diagnostics.capacity import format_plan
from facetrain.diagnostics.check import format_stages, run_check
from facetrain.diagnostics.outliers import (
    DEFAULT_ANGLE,
    check_reportable,
    find_outliers,
    format_summary,
    write_outliers_tsv,
)

__all__ = [
    "DEFAULT_ANGLE",
    "check_reportable",
    "find_outliers",
    "format_plan",
    "format_stages",
    "format_summary",
    "run_check",
    "write_outliers_tsv",
]
