"""The backbone registry: torchvision's ImageNet networks (classifier removed) and the face networks.

A torchvision backbone is a trunk that the embedder's pool + projection neck follows. A face backbone
(IResNet, MobileFaceNet) comes with its paper's own output layer as the neck (``face_neck``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn
from torchvision import models as tv

from facetrain.checkpoint import read_tensors
from facetrain.errors import ShapeError
from facetrain.models.iresnet import IRESNET_DEPTHS, FlattenNeck, IResNetTrunk
from facetrain.models.mobilefacenet import GDCNeck, MobileFaceNetTrunk

# name -> torchvision constructor; the classifier is stripped by ``features_of``.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tv.resnet18,
    "resnet34": tv.resnet34,
    "resnet50": tv.resnet50,
    "resnet101": tv.resnet101,
    "resnet152": tv.resnet152,
    "vgg11": tv.vgg11,
    "vgg11_bn": tv.vgg11_bn,
    "vgg13": tv.vgg13,
    "vgg13_bn": tv.vgg13_bn,
    "vgg16": tv.vgg16,
    "vgg16_bn": tv.vgg16_bn,
    "vgg19": tv.vgg19,
    "vgg19_bn": tv.vgg19_bn,
}
# name -> (trunk constructor, output-layer class): the face networks, each with its paper's neck.
FACE_BACKBONES: dict[str, tuple[Callable[[], nn.Module], type[nn.Module]]] = {
    **{name: (lambda d=depths: IResNetTrunk(d), FlattenNeck) for name, depths in IRESNET_DEPTHS.items()},
    "mobilefacenet": (MobileFaceNetTrunk, GDCNeck),
}
# Keys of the torchvision classifier, which a weights file may carry and we do not use.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def backbone_names() -> list[str]:
    return sorted([*BACKBONES, *FACE_BACKBONES])


def is_face_backbone(name: str) -> bool:
    return name in FACE_BACKBONES


def create_torchvision(name: str) -> nn.Module:
    if name not in BACKBONES:
        raise ShapeError(f"model.backbone: unknown backbone '{name}': choose one of {', '.join(backbone_names())}")
    return BACKBONES[name](weights=None)


def create_trunk(name: str) -> nn.Module:
    """(B, 3, H, W) -> (B, C, h, w) for any registered backbone."""
    if name in FACE_BACKBONES:
        return FACE_BACKBONES[name][0]()
    return features_of(create_torchvision(name))


def face_neck(name: str, channels: int, embedding_dim: int, dropout: float) -> nn.Module:
    """The output layer a face backbone's paper puts after its trunk."""
    return FACE_BACKBONES[name][1](channels, embedding_dim, dropout)


def features_of(model: nn.Module) -> nn.Sequential:
    """The convolutional trunk: (B, 3, H, W) -> (B, C, h, w), with pooling and classifier removed."""
    if isinstance(model, tv.ResNet):
        return nn.Sequential(
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
            model.layer1,
            model.layer2,
            model.layer3,
            model.layer4,
        )
    if isinstance(model, tv.VGG):
        return model.features
    raise TypeError(f"no feature extractor known for {type(model).__name__}")


def load_pretrained(model: nn.Module, path: str, name: str) -> None:
    """Loads a local torchvision state dict into ``model``, ignoring its classifier."""
    file = Path(path)
    fix = f"give a local torchvision .pth file for {name}, or null to train from scratch"
    state = read_tensors(file, ShapeError, "model.pretrained: weights file", fix)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ShapeError(f"model.pretrained: '{file}' holds a {type(state).__name__}, not a state dict")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    given = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    # Older torchvision files predate BatchNorm's step counter; it carries no learned weights.
    missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    # Keys the model lacks mean another architecture (resnet34 weights hold blocks resnet18 has not).
    unexpected = [k for k in given if k not in own and not k.endswith("num_batches_tracked")]
    if missing or mismatched or unexpected:
        detail = "; ".join(
            mismatched[:3] + [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        )
        raise ShapeError(
            f"model.pretrained: '{file}' does not match backbone {name} ({len(mismatched)} shape mismatches, "
            f"{len(missing)} missing and {len(unexpected)} unexpected keys: {detail}): "
            "use weights saved for the configured model.backbone"
        )
    model.load_state_dict({k: given[k] for k in own if k in given}, strict=False)
