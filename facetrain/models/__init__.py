"""Models: torchvision backbones, the embedder (backbone + neck), the margin heads and their sharded form."""

from facetrain.models.backbones import create_torchvision, load_pretrained
from facetrain.models.embedder import Embedder, build_embedder
from facetrain.models.heads import build_head
from facetrain.models.sharded import ROW_KEYS, ShardedHead

__all__ = [
    "ROW_KEYS",
    "Embedder",
    "ShardedHead",
    "build_embedder",
    "build_head",
    "create_torchvision",
    "load_pretrained",
]
