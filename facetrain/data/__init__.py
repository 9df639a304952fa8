"""Data: identity folders, datasets and loaders, and the image preprocessing shared by every stage."""

from facetrain.data.folders import (
    EpochSampler,
    FaceDataset,
    build_datasets,
    eval_loader,
    num_classes_problem,
    quiet_worker,
    scan_identities,
    split_identities,
    train_loader,
)
from facetrain.data.preprocess import IMAGE_EXTENSIONS, MEAN, STD, Preprocess

__all__ = [
    "IMAGE_EXTENSIONS",
    "MEAN",
    "STD",
    "EpochSampler",
    "FaceDataset",
    "Preprocess",
    "build_datasets",
    "eval_loader",
    "num_classes_problem",
    "quiet_worker",
    "scan_identities",
    "split_identities",
    "train_loader",
]
