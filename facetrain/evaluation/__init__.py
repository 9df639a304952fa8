"""Evaluation: pairs files, verification metrics, checkpoint scoring, reports and plots."""

from facetrain.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "evaluate": (
            "FAR_TARGETS", "PairImages", "PairsReport", "embed_pairs_images", "load_pairs_set", "report_pairs",
            "run_eval", "unique_names",
        ),
        "pairgen": ("write_pairs_file",),
        "pairs": ("PairList", "read_pairs", "read_pairs_files", "require_pairs_file"),
        "plots": ("verification_figure",),
        "report": ("format_report", "write_json", "write_plots"),
        "verification": ("embed_loader", "holdout_metrics"),
    },
)  # fmt: skip
