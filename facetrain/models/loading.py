"""A checkpoint's embedder, ready to embed: the one path from a facetrain checkpoint to a model.

Evaluation, export, embedding, the outlier report and anything else that scores images with a
trained model load it here, with the preprocessing it was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facetrain.checkpoint import BareWeights, load_checkpoint
from facetrain.config import Config, config_from_dict
from facetrain.data import Preprocess
from facetrain.errors import CheckpointError
from facetrain.models.embedder import Embedder, build_embedder


@dataclass(frozen=True)
class LoadedModel:
    embedder: Embedder
    preprocess: Preprocess
    config: Config


def load_model(path: str | Path, device: torch.device, state: dict[str, Any] | None = None) -> LoadedModel:
    """The embedder of a checkpoint, in eval mode, with the preprocessing it was trained with.

    ``state`` is the checkpoint at ``path`` when the caller has read it already (it is read once).
    """
    state = read_checkpoint(path) if state is None else state
    config = config_from_dict(state["config"], source=f"config inside '{path}'")
    # The weights come from the checkpoint; never re-read the original pretrained file.
    model_config = dataclasses.replace(config.model, pretrained=None)
    embedder = build_embedder(model_config, config.data.image_size)
    load_weights(embedder, state, "embedder", path)
    return LoadedModel(embedder.to(device).eval(), Preprocess.from_config(config.data), config)


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``load_checkpoint``, with insightface's backbone.pth named for what it holds and the import line
    that converts it (the architecture read from the weights already loaded)."""
    try:
        return load_checkpoint(path, mmap=mmap)
    except BareWeights as exc:
        from facetrain.models.insightface import import_hint  # it imports this module: not at the top

        raise CheckpointError(import_hint(exc.state, path) or str(exc)) from None


def load_weights(module: torch.nn.Module, state: dict[str, Any], part: str, path: str | Path) -> None:
    """Loads ``state[part]`` into ``module``; weights that do not fit name the first mismatch in one line."""
    try:
        module.load_state_dict(state[part])
    except (RuntimeError, TypeError, AttributeError):
        reason = first_mismatch(module.state_dict(), state[part])
        raise CheckpointError(
            f"checkpoint '{path}': its {part} weights do not fit its own config ({reason}): "
            "the file was altered or not written by facetrain train"
        ) from None
    broken = next((k for k, v in module.state_dict().items() if v.is_floating_point() and not v.isfinite().all()), None)
    if broken is not None:  # every embedding would be NaN, and every score, threshold and export with it
        raise CheckpointError(
            f"checkpoint '{path}': its {part} weight {broken} holds NaN or infinite values (the run diverged): "
            "use an earlier checkpoint, or retrain with a lower train.lr"
        )


def first_mismatch(expected: dict[str, Any], given: Any) -> str:
    """The first key that is missing, extra or of another shape, for a one-line message."""
    if not isinstance(given, dict):
        return f"a {type(given).__name__} instead of a state dict"
    for key, tensor in expected.items():
        if key not in given:
            return f"missing {key}"
        shape = getattr(given[key], "shape", None)
        if shape is None or tuple(shape) != tuple(tensor.shape):
            return f"{key}: {tuple(shape) if shape is not None else type(given[key]).__name__} vs {tuple(tensor.shape)}"
    extra = [key for key in given if key not in expected]
    return f"unexpected {extra[0]}" if extra else "unknown difference"
