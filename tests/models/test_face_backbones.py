"""IResNet and MobileFaceNet: their layer tables, their output layers, and the rest of facetrain around them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facetrain.config import FACE_BACKBONES, HEAD_TYPES, ModelConfig, config_from_dict
from facetrain.errors import ConfigError, ShapeError
from facetrain.models import build_embedder, build_head
from facetrain.training.optim import param_groups

# Blocks per stage, from the published table (not from our code).
DEPTHS = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
    "iresnet200": [6, 26, 60, 6],
}


def test_face_backbones_are_offered():
    assert set(FACE_BACKBONES) == {*DEPTHS, "mobilefacenet"}


@pytest.mark.parametrize("size", [96, 112, 160])
@pytest.mark.parametrize("backbone", sorted(FACE_BACKBONES))
def test_output_layer_flattens_seven_by_seven_at_any_size(backbone, size):
    with torch.device("meta"):
        embedder = build_embedder(ModelConfig(backbone=backbone, embedding_dim=128), size)
        features = embedder.backbone(torch.empty(2, 3, size, size))
        out = embedder(torch.empty(2, 3, size, size))
    assert tuple(features.shape[1:]) == (512, -(-size // 16), -(-size // 16))
    assert tuple(out.shape) == (2, 128)
    stages = {name: tuple(tensor.shape[1:]) for name, tensor, _ in embedder.neck.stages(features)}
    assert stages["pool"] == (512, 7, 7)  # the identity at 112 px, so released weights see what they were made for
    if backbone == "mobilefacenet":
        assert stages["gdc"] == (512, 1, 1) and stages["flatten"] == (512,)
    else:
        assert stages["flatten"] == (512 * 7 * 7,)


@pytest.mark.parametrize("backbone", sorted(DEPTHS))
def test_iresnet_follows_the_layer_table(backbone):
    with torch.device("meta"):
        trunk = build_embedder(ModelConfig(backbone=backbone), 112).backbone
    assert trunk.conv1.kernel_size == (3, 3) and trunk.conv1.stride == (1, 1)
    assert isinstance(trunk.prelu, nn.PReLU)
    for index, (blocks, width) in enumerate(zip(DEPTHS[backbone], (64, 128, 256, 512), strict=True), start=1):
        stage = getattr(trunk, f"layer{index}")
        assert len(stage) == blocks
        first = stage[0]
        assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)  # the stride is on the second conv
        assert first.conv2.out_channels == width and first.downsample is not None
        assert all(block.downsample is None for block in stage[1:])
    norms = [m for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-5 for m in norms)


def test_iresnet_output_scale_stays_fixed_at_one():
    """The final BN's scale is not learned (the field's setting): not in any optimizer group, unchanged by a step."""
    embedder = build_embedder(ModelConfig(backbone="iresnet18", embedding_dim=8), 32).train()
    scale = embedder.neck.features.weight
    assert not scale.requires_grad and torch.equal(scale, torch.ones(8))
    groups = param_groups([embedder], weight_decay=0.1)
    assert all(scale is not p for group in groups for p in group["params"])
    optimizer = torch.optim.SGD(groups, lr=1.0)
    embedder(torch.randn(4, 3, 32, 32)).pow(2).sum().backward()
    optimizer.step()
    assert torch.equal(embedder.neck.features.weight, torch.ones(8))


@pytest.mark.parametrize("backbone", ["iresnet18", "mobilefacenet"])
def test_real_forward_backward_and_channels_last(backbone):
    torch.manual_seed(0)
    embedder = build_embedder(ModelConfig(backbone=backbone, embedding_dim=16), 32)
    images = torch.randn(3, 3, 32, 32, requires_grad=True)
    out = embedder(images)
    out.sum().backward()
    assert out.shape == (3, 16) and torch.isfinite(images.grad).all()
    first_conv = next(m for m in embedder.backbone.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    embedder.eval()
    with torch.no_grad():
        plain = embedder(images)
        nhwc = embedder.to(memory_format=torch.channels_last)(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc, plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_every_head_trains_on_a_face_backbone(head_type):
    torch.manual_seed(0)
    embedder = build_embedder(ModelConfig(backbone="mobilefacenet", embedding_dim=16), 32).train()
    options = {} if head_type == "softmax" else {"s": 16.0}
    cfg = config_from_dict({"head": {"type": head_type, **options}}).head
    head = build_head(cfg, 16, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    logits, _ = head(embedder(torch.randn(6, 3, 32, 32)), labels)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert embedder.backbone.layers[0].layers[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.pool_size=2", r"model.pool_size=2 applies to torchvision backbones; iresnet50's output layer"),
        ("model.pretrained=w.pth", r"model.pretrained takes torchvision ImageNet weights, not iresnet50 weights"),
    ],
)
def test_torchvision_only_keys_are_refused_for_a_face_backbone(override, message):
    key, value = override.split("=")
    raw = {"model": {"backbone": "iresnet50", key.split(".")[1]: int(value) if value.isdigit() else value}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
    with pytest.raises(ShapeError, match=message), torch.device("meta"):  # the library refuses it too
        build_embedder(ModelConfig(**raw["model"]), 112)
