"""insightface's backbone.pth both ways: strict import, exact embeddings, one-line refusals, reverse export."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from insightface_layout import IRESNET_TABLE, face_like_images, layout_of, random_weights, reference_forward

from facetrain.config import INSIGHTFACE_NAMES, ModelConfig, resolve_arch
from facetrain.errors import CheckpointError, ConfigError
from facetrain.models.embedder import build_embedder
from facetrain.models.insightface import embedder_from_insightface, insightface_state_dict

NAMES = ("r18", "r34", "r50", "r100", "r200", "mbf")


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def meta_weights(name: str, dim: int = 512) -> dict[str, torch.Tensor]:
    """The layout with no values: enough for the checks that read keys and shapes only."""
    return {key: torch.empty(shape, device="meta") for key, shape in layout_of(name, dim).items()}


@functools.cache
def weights(name: str, dim: int) -> dict[str, torch.Tensor]:
    return random_weights(layout_of(name, dim), seed=len(name) + dim)


def test_names_resolve_both_ways():
    for ours, short in INSIGHTFACE_NAMES.items():
        assert resolve_arch(short) == ours and resolve_arch(ours) == ours
    with pytest.raises(ConfigError, match=r"--arch: unknown architecture 'r51': choose one of iresnet18 \(r18\)"):
        resolve_arch("r51")


@pytest.mark.parametrize("name", NAMES)
def test_the_embedder_has_insightfaces_published_layout(name):
    backbone = resolve_arch(name)
    with torch.device("meta"):  # keys and shapes only: no memory, no time
        embedder = build_embedder(ModelConfig(backbone=backbone, embedding_dim=128), 112)
    assert shapes(insightface_state_dict(embedder, backbone)) == layout_of(name, 128)


# r100 and r200 are the costly forwards (a few seconds on one core); one image each keeps them lean.
@pytest.mark.parametrize(("name", "count"), [("r18", 2), ("r34", 2), ("r50", 2), ("r100", 1), ("r200", 1), ("mbf", 2)])
def test_imported_weights_give_the_reference_embeddings(name, count):
    state = weights(name, 512)
    embedder, dim = embedder_from_insightface(dict(state), resolve_arch(name))
    assert dim == 512 and not embedder.training
    batch = face_like_images(count)
    with torch.no_grad():
        expected = F.normalize(reference_forward(name, state, batch), dim=1)
        got = F.normalize(embedder(batch), dim=1)
    assert torch.allclose(expected.norm(dim=1), torch.ones(count), atol=1e-4)  # finite, and no overflow to 0
    assert count == 1 or float(expected[0] @ expected[1]) < 0.99  # the image matters, not only the biases
    assert (got - expected).abs().max() < 1e-5


def test_the_embedding_size_is_read_from_the_file_and_export_round_trips():
    state = weights("mbf", 64)
    embedder, dim = embedder_from_insightface(state, "mobilefacenet")
    assert dim == 64
    exported = insightface_state_dict(embedder, "mobilefacenet")
    assert shapes(exported) == layout_of("mbf", 64)
    assert all(torch.equal(exported[key], state[key]) for key in state)
    again, _ = embedder_from_insightface(exported, "mobilefacenet")
    batch = face_like_images()
    with torch.no_grad():
        assert torch.equal(again(batch), embedder(batch))


def test_wrapped_prefixed_and_counterless_files_load():
    state = weights("r18", 32)
    wrapped = {"state_dict": {"module." + key: value for key, value in state.items()}}
    counterless = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    batch = face_like_images(1)
    with torch.no_grad():
        outputs = [embedder_from_insightface(raw, "iresnet18")[0](batch) for raw in (state, wrapped, counterless)]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize(
    ("held", "asked", "expected"),
    [
        ("r100", "iresnet50", "'backbone.pth' holds iresnet100 weights (layer2 has 13 blocks), not iresnet50 (r50): "
         "use --arch iresnet100"),
        ("r18", "iresnet34", "holds iresnet18 weights (layer1 has 2 blocks), not iresnet34 (r34): "
         "use --arch iresnet18"),
        ("mbf", "iresnet50", "holds mobilefacenet weights (its conv_sep.* and layers.* keys are MobileFaceNet's), "
         "not iresnet50 (r50): use --arch mobilefacenet"),
        ("r50", "mobilefacenet", "holds iresnet50 weights (an IResNet with 3, 4, 14, 3 blocks in layer1 to layer4), "
         "not mobilefacenet (mbf): use --arch iresnet50"),
    ],
)  # fmt: skip
def test_another_architecture_is_named_with_the_one_asked_for(held, asked, expected):
    with pytest.raises(CheckpointError) as caught:
        embedder_from_insightface(meta_weights(held), asked)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_depth_is_named():
    state = {key: value for key, value in meta_weights("r18").items() if not key.startswith("layer4.1.")}
    with pytest.raises(CheckpointError, match=r"holds an IResNet with 2, 2, 2, 1 blocks .* none of facetrain's"):
        embedder_from_insightface(state, "iresnet18")


def test_an_embedding_size_facetrain_does_not_take_is_refused_before_building():
    state = meta_weights("mbf", 100_000)  # a 100,000-row Linear would be built and filled otherwise
    with pytest.raises(CheckpointError, match="holds 100000-d embeddings, a size facetrain does not take"):
        embedder_from_insightface(state, "mobilefacenet")


def test_another_embedding_size_names_both():
    with pytest.raises(CheckpointError, match=r"holds 128-d embeddings \(fc.weight has 128 rows\), not 512-d"):
        embedder_from_insightface(meta_weights("r50", 128), "iresnet50", embedding_dim=512)
    with pytest.raises(CheckpointError, match=r"features.layers.2.weight has 128 rows\), not 512-d"):
        embedder_from_insightface(meta_weights("mbf", 128), "mobilefacenet", embedding_dim=512)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.pop("layer2.1.conv1.weight"), "missing layer2.1.conv1.weight"),
        (lambda s: s.pop("features.running_var"), "missing features.running_var"),
        (lambda s: s.update({"fc2.weight": torch.zeros(2)}), "unexpected fc2.weight"),
        (lambda s: s.update({"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}),
         "layer1.0.conv1.weight: (64, 64, 1, 1) vs (64, 64, 3, 3) (file vs expected)"),
    ],
)  # fmt: skip
def test_a_missing_unexpected_or_misshaped_key_is_named(change, expected):
    state = dict(weights("r18", 32))
    change(state)
    with pytest.raises(CheckpointError) as caught:
        embedder_from_insightface(state, "iresnet18", source="w.pth")
    message = str(caught.value)
    assert message.startswith("'w.pth' does not fit insightface's r18 (iresnet18): ") and expected in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([1, 2], "holds a list, not a state dict"),
        ({}, "holds an empty dict"),
        ({"conv1.weight": "text"}, "holds 'conv1.weight', which is not a tensor"),
        ({"config": {}, "embedder": {}}, "is a facetrain checkpoint already"),
        ({"head.weight": torch.zeros(2)}, "holds no IResNet or MobileFaceNet keys"),
    ],
)
def test_a_file_that_is_no_insightface_state_dict_is_named(raw, expected):
    with pytest.raises(CheckpointError, match=expected):
        embedder_from_insightface(raw, "iresnet18")


def test_non_finite_weights_are_refused():
    state = dict(weights("r18", 32))
    state["fc.bias"] = state["fc.bias"].clone()
    state["fc.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match="fc.bias holds NaN or infinite values"):
        embedder_from_insightface(state, "iresnet18")


def test_a_torchvision_backbone_has_no_insightface_layout():
    embedder = build_embedder(ModelConfig(backbone="resnet18", embedding_dim=8), 32)
    with pytest.raises(CheckpointError, match="resnet18 is no insightface architecture"):
        insightface_state_dict(embedder, "resnet18")


def test_the_table_covers_every_insightface_name():
    assert set(IRESNET_TABLE) | {"mbf"} == set(INSIGHTFACE_NAMES.values()) == set(NAMES)
