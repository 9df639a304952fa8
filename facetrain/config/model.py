"""The ``model`` section: the backbone, its weights and the neck that makes the embedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facetrain.errors import ConfigError
from facetrain.schema import option

# The backbone registry (facetrain.models.backbones) must offer exactly these; a test checks it.
TORCHVISION_BACKBONES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
)  # fmt: skip
# The face networks, each with its paper's output layer as the neck (not pool + projection).
FACE_BACKBONES = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mobilefacenet")
BACKBONE_NAMES = TORCHVISION_BACKBONES + FACE_BACKBONES
# insightface's get_model names for the face backbones (its arcface_torch ``backbones.get_model``).
INSIGHTFACE_NAMES = {
    "iresnet18": "r18", "iresnet34": "r34", "iresnet50": "r50", "iresnet100": "r100", "iresnet200": "r200",
    "mobilefacenet": "mbf",
}  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal[BACKBONE_NAMES] = option(
        "resnet50",
        "Face networks: iresnet18/34/50/100/200 (insightface's r18 ... r200), mobilefacenet (insightface's mbf), "
        "each with its paper's output layer. torchvision ImageNet networks: resnet18/34/50/101/152, "
        "vgg11/13/16/19 (with or without _bn), followed by pool + projection.",
    )
    pretrained: str | None = option(
        None,
        "Local torchvision ImageNet weights file (.pth) for a torchvision backbone; null trains from scratch. "
        "To start from a face model, use model.init_from.",
    )
    init_from: str | None = option(
        None,
        "Fine-tuning: a facetrain checkpoint (a run's best.pt or last.pt, or one written by facetrain import) "
        "whose embedder this new run starts from; model.backbone and model.embedding_dim must match it. The head "
        "starts new (head.init), on any identities. Not the same as train --resume, which continues a run.",
    )
    embedding_dim: int = option(512, "Size of the face embedding.", ge=2, le=8192)
    pool_size: int = option(
        1,
        "torchvision backbones: output side of the neck's adaptive average pool (1 = global pool). Face backbones "
        "flatten a 7x7 map and take only 1 here.",
        ge=1,
        le=64,
    )
    dropout: float = option(0.0, "Dropout before the projection.", ge=0.0, lt=1.0)
    sync_bn: bool = option(
        False, "Multi-process runs: BatchNorm statistics over the global batch (SyncBatchNorm), not each rank's."
    )


def model_problems(model: ModelConfig) -> list[str]:
    """Two sources of starting weights at once; the neck options that only a torchvision backbone takes."""
    problems = []
    if model.init_from and model.pretrained:
        problems.append(
            "model.init_from and model.pretrained both give the embedder's starting weights: keep one "
            "(init_from: a facetrain checkpoint's embedder; pretrained: torchvision ImageNet weights)"
        )
        return problems
    if model.backbone not in FACE_BACKBONES:
        return problems
    if model.pool_size != 1:
        problems.append(
            f"model.pool_size={model.pool_size} applies to torchvision backbones; {model.backbone}'s output layer "
            "flattens the whole 7x7 map as its paper does: remove model.pool_size"
        )
    if model.pretrained:
        problems.append(
            f"model.pretrained takes torchvision ImageNet weights, not {model.backbone} weights: to start from a "
            "face model, set model.init_from to a facetrain checkpoint (facetrain import --insightface makes one "
            "from insightface's backbone.pth)"
        )
    return problems


def resolve_arch(name: str, option: str = "--arch") -> str:
    """The face backbone that ``name`` means: ours (iresnet50) or insightface's short name (r50)."""
    if name in INSIGHTFACE_NAMES:
        return name
    for ours, theirs in INSIGHTFACE_NAMES.items():
        if name == theirs:
            return ours
    known = ", ".join(f"{ours} ({theirs})" for ours, theirs in INSIGHTFACE_NAMES.items())
    raise ConfigError(f"{option}: unknown architecture '{name}': choose one of {known}")
