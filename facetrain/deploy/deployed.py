"""Exported (deployable) models: their metadata and how facetrain loads them back.

An exported TorchScript file carries ``facetrain.json`` in its extra files (an ONNX export in its
``metadata_props``): everything a service needs to feed it (input size, centre crop, normalisation)
and to read its output (embedding size, optionally a decision threshold). Plain ``torch.jit.load``
reads it; facetrain is not needed.
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
from facetrain.deploy.inputs import EXPORTED_FIX, check_threshold, require_exported
from facetrain.deploy.model_file import METADATA_NAME
from facetrain.errors import CheckpointError
from facetrain.models import InputSpec

METADATA_VERSION = 1


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
            metadata.check()
            return metadata
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CheckpointError(
                f"'{source}': its {METADATA_NAME} is unreadable ({exc}): re-export the model"
            ) from None

    def check(self) -> None:
        """Raises ValueError on fields no export writes (a damaged or hand-edited file)."""
        if not (_whole(self.image_size) and 8 <= self.image_size <= 4096):
            raise ValueError(f"image_size {self.image_size!r} is not a side of 8 to 4096 pixels")
        if not (_whole(self.embedding_dim) and self.embedding_dim >= 1):
            raise ValueError(f"embedding_dim {self.embedding_dim!r} is not a positive whole number")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(_finite(v) for v in values):
                raise ValueError(f"{name} {list(values)!r} is not three finite numbers")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std {list(self.std)!r} has a value <= 0")
        crop = self.center_crop
        if crop is not None and not ((_whole(crop) and crop >= 1) or (_finite(crop) and 0 < crop <= 1)):
            raise ValueError(f"center_crop {crop!r} is neither a size in pixels nor a fraction in (0, 1]")

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.center_crop)

    @property
    def input_spec(self) -> InputSpec:
        """The export's input as uint8 pixels become it: mean and std in 0-255 units, RGB, NCHW."""
        return InputSpec(self.image_size, self.center_crop, _pixel_units(self.mean), _pixel_units(self.std))


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """A TorchScript model written by ``facetrain export`` and its metadata."""
    file = require_exported(path)
    model, text = read_torchscript(file, device)
    if not text:
        raise CheckpointError(f"'{file}' has no {METADATA_NAME}: it was not written by facetrain export")
    return model, ModelMetadata.from_json(text, str(file))


def read_torchscript(
    file: Path, device: str | torch.device, fix: str = EXPORTED_FIX
) -> tuple[torch.jit.ScriptModule, str]:
    """A TorchScript file (checked to be one) in eval mode, and its ``facetrain.json`` ("" when it has none)."""
    extra = {METADATA_NAME: ""}
    try:
        with warnings.catch_warnings():  # torch's torch.jit deprecation notice would only puzzle a CLI user
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            model = torch.jit.load(str(file), map_location=device, _extra_files=extra)
    except Exception:  # a damaged file: the callers let only TorchScript through
        raise CheckpointError(f"model '{file}' is damaged or truncated: {fix}") from None
    text = extra[METADATA_NAME]
    try:
        return model.eval(), text.decode() if isinstance(text, bytes) else text
    except UnicodeDecodeError:
        raise CheckpointError(f"model '{file}': its {METADATA_NAME} is not text: {fix}") from None


def _pixel_units(values: tuple[float, float, float]) -> tuple[float, float, float]:
    """0-1 units (the metadata's, torchvision's) -> 0-255 pixel units (``InputSpec``'s)."""
    return values[0] * 255.0, values[1] * 255.0, values[2] * 255.0


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
