"""insightface's released ``backbone.pth`` weights, both ways: into an embedder, and out of one.

The face backbones' module names follow the layout of insightface's arcface_torch state dicts, so
each key maps to one of ours by a prefix: IResNet's output layer (``bn2``, ``fc``, ``features``)
and MobileFaceNet's GDC (``features.*``) are the neck, everything else the backbone. Loading is
strict: every key of the file is used and none is missing (a BatchNorm's ``num_batches_tracked``
counter, which holds no weights, may be absent). A file of another architecture or embedding size is
named for what it holds, from its own keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from facetrain.config import INSIGHTFACE_NAMES, ModelConfig, config_from_dict
from facetrain.errors import CheckpointError, ConfigError
from facetrain.models.embedder import Embedder, build_embedder
from facetrain.models.iresnet import IRESNET_DEPTHS
from facetrain.models.loading import first_mismatch
from facetrain.models.mobilefacenet import SCALE

MOBILEFACENET = "mobilefacenet"
INSIGHTFACE_INPUT_SIZE = 112  # insightface's networks take aligned 112x112 crops; their fc flattens the 7x7 map
IRESNET_NECK = ("bn2.", "fc.", "features.")
MBF_NECK = "features."
# The Linear whose rows are the embedding: (D, 512*7*7) in IResNet, (D, 512) in MobileFaceNet.
EMBEDDING_WEIGHT = {"iresnet": "fc.weight", MOBILEFACENET: "features.layers.2.weight"}
_COUNTER = "num_batches_tracked"
MIN_EMBEDDING, MAX_EMBEDDING = 2, 8192  # model.embedding_dim's range


def insightface_name(backbone: str) -> str:
    """insightface's ``get_model`` name for a face backbone (iresnet50 -> r50)."""
    return INSIGHTFACE_NAMES[backbone]


def to_facetrain_key(key: str, backbone: str) -> str:
    """insightface key -> embedder key (``fc.weight`` -> ``neck.fc.weight``, ``layer1.0.conv1.weight`` ->
    ``backbone.layer1.0.conv1.weight``; mbf ``features.layers.2.weight`` -> ``neck.layers.2.weight``)."""
    if backbone == MOBILEFACENET:
        return "neck." + key.removeprefix(MBF_NECK) if key.startswith(MBF_NECK) else "backbone." + key
    return ("neck." if key.startswith(IRESNET_NECK) else "backbone.") + key


def to_insightface_key(key: str, backbone: str) -> str:
    """Embedder key -> insightface key: the inverse of ``to_facetrain_key``."""
    part, _, rest = key.partition(".")
    if part == "neck":
        return MBF_NECK + rest if backbone == MOBILEFACENET else rest
    if part != "backbone":
        raise KeyError(f"{key} is no embedder key")
    return rest


def insightface_state_dict(embedder: Embedder, backbone: str) -> dict[str, torch.Tensor]:
    """The embedder's weights under insightface's key names, for ``get_model(name).load_state_dict``."""
    if backbone not in INSIGHTFACE_NAMES:
        raise CheckpointError(f"{backbone} is no insightface architecture: only {', '.join(INSIGHTFACE_NAMES)} are")
    return {to_insightface_key(key, backbone): value for key, value in embedder.state_dict().items()}


def unwrap(raw: Any, source: str) -> dict[str, torch.Tensor]:
    """The plain state dict of a loaded file: unwraps ``{"state_dict": ...}`` and DDP's ``module.`` prefix."""
    state = raw
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and {"embedder", "config"} <= set(state):
        raise CheckpointError(f"'{source}' is a facetrain checkpoint already: use it as it is, no import needed")
    if not isinstance(state, dict) or not state:
        what = "an empty dict" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"'{source}' holds {what}, not a state dict: give insightface's backbone.pth")
    odd = next((key for key, value in state.items() if not isinstance(key, str) or not torch.is_tensor(value)), None)
    if odd is not None:
        raise CheckpointError(f"'{source}' holds {odd!r}, which is not a tensor: give insightface's backbone.pth")
    if all(key.startswith("module.") for key in state):  # saved from a DistributedDataParallel wrapper
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def import_hint(raw: dict[str, Any], path: str | Path) -> str | None:
    """What to say of insightface's bare weights (``raw``, as read from ``path``) given where a facetrain
    checkpoint belongs: ``facetrain import`` them first, with the architecture their keys describe. None
    when they are no architecture insightface releases (the generic message stands)."""
    try:
        state = unwrap(raw, str(path))
    except CheckpointError:
        return None
    arch, _ = infer_arch(state)
    if arch is None:
        return None
    out = Path(path).with_name(f"{Path(path).stem}-{arch}.pt")
    return (
        f"'{path}' holds insightface's {insightface_name(arch)} weights (a bare state dict, no facetrain config): "
        f"import them first, facetrain import --insightface {path} --arch {arch} --out {out}, then use {out}"
    )


def infer_arch(state: dict[str, torch.Tensor]) -> tuple[str | None, str]:
    """(the architecture the keys describe, or None for one facetrain does not build; what tells)."""
    if any(key.startswith("conv_sep.") for key in state):
        stem = state.get("layers.0.layers.0.weight")
        width = int(stem.shape[0]) if stem is not None and stem.dim() == 4 else None
        if width == 64 * SCALE:
            return MOBILEFACENET, "its conv_sep.* and layers.* keys are MobileFaceNet's"
        if width is None:
            return None, "a MobileFaceNet without its first conv (no layers.0.layers.0.weight: the file is incomplete)"
        return None, f"a MobileFaceNet whose first conv has {width} channels (insightface's mbf has {64 * SCALE})"
    counts = tuple(_blocks(state, stage) for stage in range(1, 5))
    if not counts[0]:
        return None, f"no IResNet or MobileFaceNet keys (its first key is {next(iter(state))})"
    found = next((name for name, depths in IRESNET_DEPTHS.items() if depths == counts), None)
    return found, f"an IResNet with {', '.join(map(str, counts))} blocks in layer1 to layer4"


def _blocks(state: dict[str, torch.Tensor], stage: int) -> int:
    """How many blocks ``layer<stage>`` has: the distinct indices i of ``layer<stage>.i.*`` keys."""
    pattern = re.compile(rf"layer{stage}\.(\d+)\.")
    return len({match.group(1) for key in state if (match := pattern.match(key))})


def check_arch(state: dict[str, torch.Tensor], backbone: str, source: str) -> None:
    """Refuses, in one line naming both, a file that holds another architecture than ``backbone``."""
    found, evidence = infer_arch(state)
    if found == backbone:
        return
    asked = f"{backbone} ({insightface_name(backbone)})"
    if found is None:
        raise CheckpointError(
            f"'{source}' holds {evidence}, which is none of facetrain's architectures, not {asked}: give the "
            f"backbone.pth of insightface's {', '.join(INSIGHTFACE_NAMES.values())}"
        )
    if found != MOBILEFACENET and backbone != MOBILEFACENET:  # name the first stage that tells them apart
        held, asked_for = IRESNET_DEPTHS[found], IRESNET_DEPTHS[backbone]
        stage = next(i for i in range(len(held)) if held[i] != asked_for[i])
        evidence = f"layer{stage + 1} has {held[stage]} blocks"
    raise CheckpointError(f"'{source}' holds {found} weights ({evidence}), not {asked}: use --arch {found}")


def embedding_size(state: dict[str, torch.Tensor], backbone: str, given: int | None, source: str) -> int:
    """The embedding size the file's last Linear has; ``given`` must agree when given."""
    key = EMBEDDING_WEIGHT[MOBILEFACENET if backbone == MOBILEFACENET else "iresnet"]
    weight = state.get(key)
    if weight is None or weight.dim() != 2:
        return given or 512  # the strict key check names what is wrong with it
    rows = int(weight.shape[0])
    if given is not None and given != rows:
        raise CheckpointError(
            f"'{source}' holds {rows}-d embeddings ({key} has {rows} rows), not {given}-d: "
            f"give --embedding-dim {rows}, or leave it out (it is read from the file)"
        )
    return rows


def embedder_from_insightface(
    raw: Any, backbone: str, embedding_dim: int | None = None, source: str = "backbone.pth"
) -> tuple[Embedder, int]:
    """An embedder holding insightface's weights (loaded strictly), and its embedding size.

    Args:
        raw: What ``torch.load`` read from the file: a state dict, maybe wrapped or DDP-prefixed.
        backbone: One of facetrain's face backbones (iresnet18 ... iresnet200, mobilefacenet).
        embedding_dim: The expected size; None reads it from the file.
        source: The file's name, for messages.

    Raises:
        CheckpointError: Another architecture or embedding size (both named), or a missing, unexpected
            or mis-shaped key (the first one named), or weights that are not finite.
    """
    state = unwrap(raw, source)
    check_arch(state, backbone, source)
    dim = embedding_size(state, backbone, embedding_dim, source)
    embedder = build_embedder(_model_config(backbone, dim, source), INSIGHTFACE_INPUT_SIZE)
    expected = insightface_state_dict(embedder, backbone)
    needed = {key: value for key, value in expected.items() if key in state or not key.endswith(_COUNTER)}
    shapes_differ = any(tuple(state[key].shape) != tuple(value.shape) for key, value in needed.items() if key in state)
    if set(needed) - set(state) or set(state) - set(expected) or shapes_differ:
        reason = first_mismatch(needed, state)
        if shapes_differ and not reason.startswith(("missing ", "unexpected ")):
            reason += " (file vs expected)"
        raise CheckpointError(
            f"'{source}' does not fit insightface's {insightface_name(backbone)} ({backbone}): {reason}: give the "
            f"backbone.pth that get_model('{insightface_name(backbone)}', num_features={dim}) saves"
        )
    broken = [key for key, value in state.items() if value.is_floating_point() and not value.isfinite().all()]
    if broken:
        raise CheckpointError(f"'{source}': {broken[0]} holds NaN or infinite values: give weights from a finished run")
    own = embedder.state_dict()
    mapped = {key: own[key] for key in own if key.endswith(_COUNTER)}  # the counters a file may lack
    mapped.update({to_facetrain_key(key, backbone): value for key, value in state.items()})
    embedder.load_state_dict(mapped, strict=True)
    return embedder.eval(), dim


def _model_config(backbone: str, dim: int, source: str) -> ModelConfig:
    """The model section for the file, checked like a config's (an absurd size is refused, not built)."""
    try:
        return config_from_dict({"model": {"backbone": backbone, "embedding_dim": dim}}).model
    except ConfigError:
        raise CheckpointError(
            f"'{source}' holds {dim}-d embeddings, a size facetrain does not take (model.embedding_dim is "
            f"{MIN_EMBEDDING} to {MAX_EMBEDDING}): give insightface's backbone.pth of a face network"
        ) from None
