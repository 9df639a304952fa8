"""Embedder (backbone + neck) and margin heads."""

from facetrain.models.embedder import Embedder, build_embedder
from facetrain.models.heads import ArcFace, build_head

__all__ = ["ArcFace", "Embedder", "build_embedder", "build_head"]
