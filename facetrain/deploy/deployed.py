"""Exported (deployable) models: their metadata and how facetrain loads them back.

An exported TorchScript file carries ``facetrain.json`` in its extra files: everything a service
needs to feed it (input size, centre crop, normalisation) and to read its output (embedding size,
optionally a decision threshold). Plain ``torch.jit.load`` reads it; facetrain is not needed.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from facetrain import __version__
from facetrain.config import Config
from facetrain.data import MEAN, STD, Preprocess
from facetrain.errors import CheckpointError, ConfigError, FacetrainError, brief
from facetrain.files import TORCH_ARCHIVE, TORCHSCRIPT, describe, require_file

METADATA_NAME = "facetrain.json"
METADATA_VERSION = 1
# Eval may put a threshold a hair outside the scores it saw (max score + 1e-6), so allow a little slack.
_THRESHOLD_SLACK = 1e-3


def check_threshold(value: float | None, where: str, error: type[FacetrainError] = ConfigError) -> float | None:
    """A cosine verification threshold: a finite number in [-1, 1] (or None); else one ``error`` line."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{where}: {brief(value)} is not a finite number: give a cosine threshold such as 0.3")
    if abs(value) > 1 + _THRESHOLD_SLACK:
        raise error(
            f"{where}: {value:g} is outside [-1, 1], where every cosine score lies: give a threshold such as 0.3 "
            "(facetrain eval reports one)"
        )
    return float(value)


@dataclass(frozen=True)
class ModelMetadata:
    backbone: str
    embedding_dim: int
    image_size: int
    center_crop: int | float | None
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    threshold: float | None = None  # a verification threshold chosen by `facetrain eval`, if known
    facetrain_version: str = __version__
    format_version: int = METADATA_VERSION
    input: str = "float32 N x 3 x H x W, RGB scaled to [0, 1] then (x - mean) / std, after centre crop and resize"
    output: str = "float32 N x embedding_dim, L2-normalised (cosine similarity = dot product)"

    @classmethod
    def from_config(cls, config: Config, threshold: float | None = None) -> ModelMetadata:
        return cls(
            backbone=config.model.backbone,
            embedding_dim=config.model.embedding_dim,
            image_size=config.data.image_size,
            center_crop=config.data.center_crop,
            threshold=threshold,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str) -> ModelMetadata:
        try:
            data = json.loads(text)
            data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
            metadata = cls(**data)
            check_threshold(metadata.threshold, f"'{source}': {METADATA_NAME} threshold", CheckpointError)
            return metadata
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(
                f"'{source}': its {METADATA_NAME} is unreadable ({exc}): re-export the model"
            ) from None

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.center_crop)


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """A TorchScript model written by ``facetrain export`` and its metadata."""
    fix = "give a file written by facetrain export"
    file = require_file(path, CheckpointError, "model", fix, ("model.pt",))
    extra = {METADATA_NAME: ""}
    try:
        with warnings.catch_warnings():  # torch's torch.jit deprecation notice would only puzzle a CLI user
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            model = torch.jit.load(str(file), map_location=device, _extra_files=extra)
    except Exception:  # a damaged file or not TorchScript
        kind = describe(file)
        if kind == TORCH_ARCHIVE:
            raise CheckpointError(
                f"model '{file}' is {kind}, not an exported model: if it is a training checkpoint, export it "
                f"first with facetrain export --checkpoint {file} --out model.pt"
            ) from None
        state = "damaged or truncated" if kind == TORCHSCRIPT else f"{kind}, not an exported model"
        raise CheckpointError(f"model '{file}' is {state}: {fix}") from None
    if not extra[METADATA_NAME]:
        raise CheckpointError(f"'{file}' has no {METADATA_NAME}: it was not written by facetrain export")
    text = extra[METADATA_NAME]
    return model.eval(), ModelMetadata.from_json(text.decode() if isinstance(text, bytes) else text, str(file))
