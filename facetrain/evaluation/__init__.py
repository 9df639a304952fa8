"""Evaluation: pairs files, verification metrics, checkpoint scoring, reports and plots."""

from facetrain.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "embedding": ("PairImages", "embed_pairs_images"),
        "evaluate": (
            "FAR_TARGETS", "PairsReport", "eval_setup", "load_pairs_set", "report_pairs", "run_eval", "unique_names",
        ),
        "ijb.meta": ("FEATURES_FIX",),
        "ijb.report": ("format_ijb", "write_ijb_json", "write_ijb_plot"),
        "ijb.protocol": ("read_protocol",),
        "ijb.run": ("run_ijb",),
        "ijb.templates": ("PoolMode",),
        "pairgen": ("write_pairs_file",),
        "pairs": ("PairList", "read_pairs", "read_pairs_files", "require_pairs_file"),
        "plots": ("verification_figure",),
        "report": ("format_report", "write_json", "write_plots"),
        "suite": ("format_suite", "mean_accuracy", "read_suite", "suite_to_dict"),
        "verification": ("embed_loader", "holdout_metrics"),
    },
)  # fmt: skip
