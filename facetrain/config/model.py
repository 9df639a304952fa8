"""The ``model`` section: the backbone, its weights and the neck that makes the embedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facetrain.schema import option

# The backbone registry (facetrain.models.backbones) must offer exactly these; a test checks it.
BACKBONE_NAMES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
)  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal[BACKBONE_NAMES] = option(
        "resnet50", "torchvision backbone: resnet18/34/50/101/152, vgg11/13/16/19 (with or without _bn)."
    )
    pretrained: str | None = option(
        None, "Local torchvision weights file (.pth) for the backbone; null trains from scratch."
    )
    embedding_dim: int = option(512, "Size of the face embedding.", ge=2, le=8192)
    pool_size: int = option(1, "Output side of the neck's adaptive average pool (1 = global pool).", ge=1, le=64)
    dropout: float = option(0.0, "Dropout before the projection.", ge=0.0, lt=1.0)
    sync_bn: bool = option(
        False, "Multi-process runs: BatchNorm statistics over the global batch (SyncBatchNorm), not each rank's."
    )
