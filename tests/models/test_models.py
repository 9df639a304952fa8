import pytest
import torch

from facetrain.config import FACE_BACKBONES, ModelConfig
from facetrain.errors import ShapeError
from facetrain.models import build_embedder
from facetrain.models.backbones import backbone_names, create_torchvision

# Channels of the last feature map, from the torchvision architectures (not from our code).
CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
CHANNELS.update({name: 512 for name in backbone_names() if name.startswith("vgg")})


def test_registry_covers_the_issue():
    wanted = {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    wanted |= {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    wanted |= {f"iresnet{d}" for d in (18, 34, 50, 100, 200)} | {"mobilefacenet"}
    assert set(backbone_names()) == wanted


@pytest.mark.parametrize("size", [96, 112, 224])
@pytest.mark.parametrize("backbone", [name for name in backbone_names() if name not in FACE_BACKBONES])
def test_neck_in_features_for_every_backbone_and_size(backbone, size):
    pool = 2
    cfg = ModelConfig(backbone=backbone, embedding_dim=64, pool_size=pool)
    with torch.device("meta"):  # shapes only: no memory, no compute
        embedder = build_embedder(cfg, size)
        out = embedder(torch.empty(5, 3, size, size))
    linear = embedder.neck[3]
    assert linear.in_features == CHANNELS[backbone] * pool * pool
    assert tuple(out.shape) == (5, 64)


@pytest.mark.parametrize("backbone", ["resnet18", "vgg11_bn"])
def test_real_forward_and_backward_at_96_px(backbone):
    embedder = build_embedder(ModelConfig(backbone=backbone, embedding_dim=32), 96)
    images = torch.randn(2, 3, 96, 96, requires_grad=True)
    out = embedder(images)
    out.sum().backward()
    assert out.shape == (2, 32) and torch.isfinite(images.grad).all()


def test_classifier_is_removed():
    embedder = build_embedder(ModelConfig(backbone="resnet18", embedding_dim=8), 64)
    names = {name for name, _ in embedder.named_modules()}
    assert not any(name.endswith("fc") or "classifier" in name for name in names)


def test_pool_size_larger_than_feature_map():
    with (
        pytest.raises(ShapeError, match=r"model.pool_size=8 is larger than the 4x4 feature map .* <= 4"),
        torch.device("meta"),
    ):
        build_embedder(ModelConfig(backbone="resnet50", pool_size=8), 112)


def test_image_too_small_for_vgg():
    with pytest.raises(ShapeError, match="data.image_size=16 is too small for vgg16"):
        build_embedder(ModelConfig(backbone="vgg16"), 16)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ShapeError, match="unknown backbone 'resnet51': choose one of .*resnet50"):
        build_embedder(ModelConfig(backbone="resnet51"), 112)


def test_local_pretrained_weights_are_loaded(tmp_path):
    source = create_torchvision("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    embedder = build_embedder(ModelConfig(backbone="resnet18", pretrained=str(path)), 64)
    assert torch.equal(embedder.backbone[0].weight, source.conv1.weight)
    assert torch.equal(embedder.backbone[7][1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_pretrained_weights_for_another_backbone_are_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(create_torchvision("resnet18").state_dict(), path)
    with pytest.raises(ShapeError, match=r"does not match backbone resnet50 \(\d+ shape mismatches.*layer"):
        build_embedder(ModelConfig(backbone="resnet50", pretrained=str(path)), 64)
    with pytest.raises(ShapeError, match="not found"):
        build_embedder(ModelConfig(backbone="resnet18", pretrained=str(tmp_path / "none.pth")), 64)


def test_old_weights_files_without_batchnorm_counters_load(tmp_path):
    source = create_torchvision("vgg11_bn")
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    embedder = build_embedder(ModelConfig(backbone="vgg11_bn", pretrained=str(tmp_path / "old.pth")), 64)
    assert torch.equal(embedder.backbone[0].weight, source.features[0].weight)


def test_weights_of_a_deeper_resnet_are_refused(tmp_path):
    # resnet34's file holds every resnet18 key with the right shapes, plus blocks resnet18 lacks.
    path = tmp_path / "r34.pth"
    torch.save(create_torchvision("resnet34").state_dict(), path)
    with pytest.raises(
        ShapeError, match=r"does not match backbone resnet18 .* unexpected keys: .*unexpected layer1\.2"
    ):
        build_embedder(ModelConfig(backbone="resnet18", pretrained=str(path)), 64)
