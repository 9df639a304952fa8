"""Diagnostics: the pre-flight check of shapes and data, and the noisy-label (outlier) report."""

from facetrain.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "capacity": ("format_plan", "ranks_problem"),
        "check": ("format_stages", "run_check"),
        "outliers": ("DEFAULT_ANGLE", "find_outliers", "format_summary", "write_outliers_tsv"),
        "reportable": ("check_reportable",),
    },
)
