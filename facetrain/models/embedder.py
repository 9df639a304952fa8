"""The embedder: backbone + neck, one module from image to embedding.

The neck's Linear input size is derived from the backbone's feature map (and ``pool_size`` for a
torchvision backbone) when the model is built, so no user ever types it. A torchvision backbone
gets the pool + projection ``Neck``; a face backbone gets its paper's output layer, which flattens
a 7x7 map (pooled to 7x7 first at sizes other than 112 px).
"""

from __future__ import annotations

import torch
from torch import nn

from facetrain.config import ModelConfig, model_problems
from facetrain.errors import ShapeError
from facetrain.models.backbones import (
    create_torchvision,
    create_trunk,
    face_neck,
    features_of,
    is_face_backbone,
    load_pretrained,
)

# The neck's Linear: resnet50 at 112 px with pool_size 7 and a 512-d embedding has 51M; 1 GB of float32 is 268M.
MAX_PROJECTION_WEIGHTS = 2**28


def feature_shape(backbone: str, image_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the backbone's output for a square input, computed on the meta device."""
    with torch.device("meta"):
        trunk = create_trunk(backbone).eval()  # eval: BatchNorm accepts any batch
        probe = torch.empty(1, 3, image_size, image_size)
        try:
            out = trunk(probe)
        except (RuntimeError, ValueError) as exc:
            raise ShapeError(
                f"data.image_size={image_size} is too small for {backbone} ({_first_line(exc)}): "
                "raise data.image_size (112 is the usual face size)"
            ) from None
    channels, height, width = out.shape[1:]
    if height < 1 or width < 1:
        raise ShapeError(
            f"data.image_size={image_size} is too small for {backbone}: its feature map would be "
            f"{height}x{width}; raise data.image_size"
        )
    return int(channels), int(height), int(width)


class Neck(nn.Sequential):
    """(B, C, h, w) -> pool (B, C, p, p) -> flatten (B, C*p*p) -> dropout -> linear -> BN (B, D)."""

    def __init__(self, channels: int, pool_size: int, embedding_dim: int, dropout: float) -> None:
        in_features = channels * pool_size * pool_size
        super().__init__(
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(in_features, embedding_dim, bias=False),  # BN right after makes a bias redundant
            nn.BatchNorm1d(embedding_dim),
        )
        self.in_features = in_features

    @property
    def embedding_dim(self) -> int:
        return self[-1].num_features

    def stages(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, list[nn.Module]]]:
        """(name, output, modules holding its parameters) for each step, for ``facetrain check``."""
        pool, flatten, _, projection, norm = self
        pooled = pool(x)
        flat = flatten(pooled)
        return [("pool", pooled, []), ("flatten", flat, []), ("projection", norm(projection(flat)), [projection, norm])]


class Embedder(nn.Module):
    """Image batch (B, 3, H, W), normalised to [-1, 1] -> embeddings (B, embedding_dim), not L2-normalised."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, feature_map: tuple[int, int, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.feature_map = feature_map  # (C, h, w) at the configured image size

    @property
    def embedding_dim(self) -> int:
        return self.neck.embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(images))


def build_embedder(cfg: ModelConfig, image_size: int) -> Embedder:
    channels, height, width = feature_shape(cfg.backbone, image_size)
    if is_face_backbone(cfg.backbone):
        check_face_options(cfg)
        neck = face_neck(cfg.backbone, channels, cfg.embedding_dim, cfg.dropout)
        return Embedder(create_trunk(cfg.backbone), neck, (channels, height, width))
    if cfg.pool_size > min(height, width):
        raise ShapeError(
            f"model.pool_size={cfg.pool_size} is larger than the {height}x{width} feature map of "
            f"{cfg.backbone} at data.image_size={image_size}: set model.pool_size <= {min(height, width)}"
        )
    weights = channels * cfg.pool_size**2 * cfg.embedding_dim
    if weights > MAX_PROJECTION_WEIGHTS:  # each key is bounded; their product must be too
        raise ShapeError(
            f"model.pool_size={cfg.pool_size} and model.embedding_dim={cfg.embedding_dim} give {cfg.backbone}'s "
            f"projection {weights / 1e6:,.0f}M weights ({channels}x{cfg.pool_size}x{cfg.pool_size} -> "
            f"{cfg.embedding_dim}), over the {MAX_PROJECTION_WEIGHTS / 1e6:.0f}M limit: lower model.pool_size "
            "or model.embedding_dim"
        )
    full = create_torchvision(cfg.backbone)
    if cfg.pretrained:
        load_pretrained(full, cfg.pretrained, cfg.backbone)
    neck = Neck(channels, cfg.pool_size, cfg.embedding_dim, cfg.dropout)
    return Embedder(features_of(full), neck, (channels, height, width))


def check_face_options(cfg: ModelConfig) -> None:
    """The neck options that only a torchvision backbone takes, refused for a face backbone."""
    problems = model_problems(cfg)
    if problems:
        raise ShapeError(problems[0])


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
