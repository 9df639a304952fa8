"""facetrain: face-recognition training with a torchvision embedder and margin heads."""

__version__ = "0.1.0"
