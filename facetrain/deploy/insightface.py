"""``facetrain import --insightface`` and ``facetrain export --format insightface``: weights both ways.

An import writes a facetrain checkpoint holding the embedder only (no margin head, no optimizer), with a
config that records the architecture, the embedding size and insightface's input (112 px aligned
crops, no centre crop), and an ``origin`` that says where the weights came from. Eval, embed, export
and ``model.init_from`` take it like any checkpoint; resuming and the outlier report, which need a
head, refuse it in one line.

An export writes the reverse: a plain state dict under insightface's key names, which its
``get_model(name, num_features=D)`` loads with ``strict=True``. It is read back and imported again
before it is moved into place, and must give the same embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from facetrain.checkpoint import read_tensors, save_checkpoint
from facetrain.config import INSIGHTFACE_NAMES, config_from_dict, config_to_dict
from facetrain.deploy.inputs import INSIGHTFACE_FIX, INSIGHTFACE_FORMAT, check_export, check_import
from facetrain.errors import CheckpointError, ConfigError, ShapeError
from facetrain.files import atomic_write
from facetrain.models import (
    INSIGHTFACE_INPUT_SIZE as INPUT_SIZE,
)
from facetrain.models import (
    embedder_from_insightface,
    insightface_name,
    insightface_state_dict,
    load_model,
)

EXACT = 1e-6  # float32 rounding at most; in practice the difference is 0


@dataclass(frozen=True)
class ImportResult:
    path: Path
    backbone: str  # facetrain's name (iresnet50)
    insightface_name: str  # insightface's (r50)
    embedding_dim: int
    parameters: int


@dataclass(frozen=True)
class InsightfaceExport:
    path: Path
    backbone: str
    insightface_name: str
    embedding_dim: int
    max_abs_diff: float  # re-imported file vs the checkpoint's embedder, on a seeded batch


def import_insightface(
    source: str | Path, arch: str, out: str | Path, embedding_dim: int | None = None, overwrite: bool = False
) -> ImportResult:
    """Writes ``out``, a facetrain checkpoint holding the embedder of insightface's weights file ``source``.

    ``arch`` is facetrain's name (iresnet50) or insightface's (r50); ``embedding_dim`` is read from the
    file when None. Raises CheckpointError naming what the file holds when it does not fit ``arch``.
    """
    checked = check_import(source, arch, out, overwrite)
    raw = read_tensors(checked.source, CheckpointError, "--insightface weights", INSIGHTFACE_FIX)
    embedder, dim = embedder_from_insightface(raw, checked.backbone, embedding_dim, source=str(checked.source))
    model = {"backbone": checked.backbone, "embedding_dim": dim}
    config = config_from_dict({"model": model, "data": {"image_size": INPUT_SIZE, "center_crop": None}})
    name = insightface_name(checked.backbone)
    state = {
        "config": config_to_dict(config),
        "embedder": embedder.state_dict(),
        "origin": {"kind": "insightface", "file": str(checked.source), "arch": checked.backbone, "name": name},
    }
    save_checkpoint(state, checked.out, option="--out")
    parameters = sum(parameter.numel() for parameter in embedder.parameters())
    return ImportResult(checked.out, checked.backbone, name, dim, parameters)


def export_insightface(checkpoint: str | Path, out: str | Path) -> InsightfaceExport:
    """Writes the checkpoint's embedder as a state dict that insightface's ``get_model`` loads strictly.

    Raises:
        ConfigError: A torchvision backbone, or a model trained on another input than whole 112 px faces.
        ShapeError: The written file, imported again, gives other embeddings (nothing is written).
    """
    target = check_export(checkpoint, out, INSIGHTFACE_FORMAT, None)
    loaded = load_model(checkpoint, torch.device("cpu"))
    backbone, size = loaded.config.model.backbone, loaded.config.data.image_size
    if backbone not in INSIGHTFACE_NAMES:
        raise ConfigError(
            f"--format insightface: checkpoint '{checkpoint}' has a {backbone} backbone, which insightface does not "
            f"build (it builds {', '.join(INSIGHTFACE_NAMES)}): export it with --format torchscript or onnx"
        )
    crop = loaded.config.data.center_crop
    if crop is not None:
        raise ConfigError(
            f"--format insightface: checkpoint '{checkpoint}' was trained on centre-cropped images "
            f"(data.center_crop {crop}), and insightface's tools feed whole aligned {INPUT_SIZE} px faces: export it "
            "with --format torchscript or onnx, which keep the crop in their metadata"
        )
    if size != INPUT_SIZE:
        raise ConfigError(
            f"--format insightface: checkpoint '{checkpoint}' was trained on {size} px images, and insightface's "
            f"networks take {INPUT_SIZE} px: export it with --format torchscript or onnx, which keep its input size"
        )
    weights = insightface_state_dict(loaded.embedder, backbone)
    images = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with atomic_write(target, "--out") as temp:
        torch.save(weights, temp)
        # Read back as a user would (weights only) and imported strictly: the file is complete and exact.
        again, dim = embedder_from_insightface(
            read_tensors(temp, CheckpointError, "exported weights", "report this as a facetrain bug"), backbone
        )
        with torch.no_grad():
            diff = float((again(images) - loaded.embedder(images)).abs().max())
        if not diff <= EXACT:  # the same weights in the same modules: anything more is a bug (NaN included)
            raise ShapeError(
                f"export check failed: the written weights give embeddings {diff:.3g} away from checkpoint "
                f"'{checkpoint}'; file removed: report this as a facetrain bug"
            )
    return InsightfaceExport(target, backbone, insightface_name(backbone), dim, diff)
