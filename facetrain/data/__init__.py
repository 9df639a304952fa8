"""Data: identity folders and ``.rec`` files, datasets and loaders, packing, and the shared preprocessing."""

from facetrain.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "align": (
            "Aligner",
            "AlignOptions",
            "align_folder",
            "check_options",
            "crop_with_landmarks",
            "parse_size",
            "require_photos",
        ),
        "batches": ("TrainImages", "as_batch"),
        "cache": ("CachePlan", "decode_into", "private_pixels"),
        "folders": ("FaceDataset", "build_datasets"),
        "identities": ("num_classes_problem", "scan_identities", "split_identities"),
        "loaders": ("EpochSampler", "eval_loader", "quiet_worker", "train_loader"),
        "pack": ("pack_folder", "unpack_records"),
        "images": ("BadImage",),
        "preprocess": ("MEAN", "STD", "Preprocess", "model_input"),
        "records": ("sample_records",),
        "sources": ("IMAGE_EXTENSIONS", "find_images", "require_source"),
    },
)
