"""Models: torchvision backbones, the embedder (backbone + neck), the margin heads, and checkpoint loading."""

from facetrain.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "backbones": ("create_torchvision", "load_pretrained"),
        "embedder": ("build_embedder",),
        "head_math": ("angle", "rival_cosines"),
        "heads": ("MarginHead", "adacos_scale", "build_head"),
        "insightface": (
            "INSIGHTFACE_INPUT_SIZE",
            "embedder_from_insightface",
            "insightface_name",
            "insightface_state_dict",
        ),
        "loading": ("first_mismatch", "load_model", "load_weights", "read_checkpoint"),
        "pixels": ("InputSpec", "ModuleEmbedder", "PixelEmbedder"),
        "sharded": ("ROW_KEYS", "ShardedHead"),
    },
)
