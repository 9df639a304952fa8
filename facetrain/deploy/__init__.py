"""Deploy: export the embedder (TorchScript/ONNX, insightface weights), import them, score any model file."""

from facetrain.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "embed": ("embed_folder",),
        "export": ("export_model", "verify_pair"),
        "insightface": ("export_insightface", "import_insightface"),
        "inputs": ("check_embed", "check_export", "check_import", "check_verify", "threshold_from_eval_json"),
        "model_file": ("InputOptions", "check_model_input"),
        "scorable": ("load_scorable",),
    },
)
