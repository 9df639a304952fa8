"""Models: torchvision backbones, the embedder (backbone + neck), the margin heads and their sharded form."""

from facetrain.models.backbones import create_torchvision, load_pretrained
from facetrain.models.embedder import Embedder, build_embedder
from facetrain.models.head_math import angle, rival_cosines
from facetrain.models.heads import MarginHead, adacos_scale, build_head
from facetrain.models.sharded import ROW_KEYS, ShardedHead

__all__ = [
    "ROW_KEYS",
    "Embedder",
    "MarginHead",
    "ShardedHead",
    "adacos_scale",
    "angle",
    "build_embedder",
    "build_head",
    "create_torchvision",
    "load_pretrained",
    "rival_cosines",
]
