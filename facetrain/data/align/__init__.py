"""Face detection (MTCNN) and alignment onto the ArcFace crop template, for photos and folders."""

from facetrain.data.align.aligner import Aligned, Aligner, choose_face
from facetrain.data.align.detect import Face, FaceDetector
from facetrain.data.align.folder import AlignOptions, AlignResult, align_folder
from facetrain.data.align.geometry import ARCFACE_112, parse_size, template, umeyama, warp

__all__ = [
    "ARCFACE_112",
    "AlignOptions",
    "AlignResult",
    "Aligned",
    "Aligner",
    "Face",
    "FaceDetector",
    "align_folder",
    "choose_face",
    "parse_size",
    "template",
    "umeyama",
    "warp",
]
