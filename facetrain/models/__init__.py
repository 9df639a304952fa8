"""Models: torchvision backbones, the embedder (backbone + neck) and the margin heads."""

from facetrain.models.backbones import create_torchvision, load_pretrained
from facetrain.models.embedder import Embedder, build_embedder
from facetrain.models.heads import build_head

__all__ = ["Embedder", "build_embedder", "build_head", "create_torchvision", "load_pretrained"]
