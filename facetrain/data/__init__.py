"""Data: identity folders and ``.rec`` files, datasets and loaders, packing, and the shared preprocessing."""

from facetrain.data.align import Aligner, AlignOptions, align_folder, parse_size
from facetrain.data.batches import TrainImages, as_batch
from facetrain.data.cache import CachePlan, decode_into, private_pixels
from facetrain.data.folders import (
    FaceDataset,
    build_datasets,
    num_classes_problem,
    scan_identities,
    split_identities,
)
from facetrain.data.loaders import EpochSampler, eval_loader, quiet_worker, train_loader
from facetrain.data.pack import pack_folder, unpack_records
from facetrain.data.preprocess import IMAGE_EXTENSIONS, MEAN, STD, BadImage, Preprocess, find_images, model_input
from facetrain.data.records import sample_records

__all__ = [
    "IMAGE_EXTENSIONS",
    "MEAN",
    "STD",
    "AlignOptions",
    "Aligner",
    "BadImage",
    "CachePlan",
    "EpochSampler",
    "FaceDataset",
    "Preprocess",
    "TrainImages",
    "align_folder",
    "as_batch",
    "build_datasets",
    "decode_into",
    "eval_loader",
    "find_images",
    "model_input",
    "num_classes_problem",
    "pack_folder",
    "parse_size",
    "private_pixels",
    "quiet_worker",
    "sample_records",
    "scan_identities",
    "split_identities",
    "train_loader",
    "unpack_records",
]
