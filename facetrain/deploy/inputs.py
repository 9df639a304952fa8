"""What the deploy commands are given, checked without torch: the export's format, threshold and
target, an exported model's file, an eval JSON's threshold, embed's folder and output, and import's
architecture, weights file and target (a model file to score with: ``facetrain.deploy.model_file``).

A wrong path or option is answered before a model is loaded; the library functions make the same
checks, so callers that skip these get the same messages.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import NamedTuple

from facetrain.checkpoint import TORCH_FILES, require_checkpoint
from facetrain.config import resolve_arch
from facetrain.data import IMAGE_EXTENSIONS, find_images
from facetrain.deploy.model_file import InputOptions, ModelFile, check_model_input
from facetrain.errors import CheckpointError, ConfigError, DataError, FacetrainError, OutputError, brief
from facetrain.files import (
    TORCH_ARCHIVE,
    TORCHSCRIPT,
    describe,
    output_path,
    require_file,
    require_folder,
    require_kind,
)

log = logging.getLogger("facetrain")

INSIGHTFACE_FORMAT = "insightface"  # a plain state dict that insightface's get_model loads
FORMATS = ("torchscript", "onnx", INSIGHTFACE_FORMAT)
INSIGHTFACE_FIX = "give the backbone.pth of an insightface arcface_torch model (r18, r34, r50, r100, r200 or mbf)"
EMBED_FORMATS = ("npz", "csv")
EXPORTED_FIX = "give a file written by facetrain export"
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


def check_export(checkpoint: str | Path, out: str | Path, fmt: str, threshold: float | None) -> Path:
    """The target of ``facetrain export``, once its format, threshold and checkpoint file are known good."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    check_threshold(threshold, "--threshold")
    if fmt == INSIGHTFACE_FORMAT and threshold is not None:
        raise ConfigError("--threshold: --format insightface writes weights only, with no metadata: drop --threshold")
    require_checkpoint(checkpoint)
    writes = {"torchscript": TORCHSCRIPT, INSIGHTFACE_FORMAT: TORCH_ARCHIVE}.get(fmt, "an ONNX model")
    return output_path(out, "--out", inputs=(checkpoint,), writes=writes)


class ImportInputs(NamedTuple):
    """What ``facetrain import`` works on, once checked."""

    source: Path  # the insightface weights file
    backbone: str  # facetrain's name of its architecture
    out: Path  # the checkpoint to write


def check_import(source: str | Path, arch: str, out: str | Path, overwrite: bool = False) -> ImportInputs:
    """``facetrain import``'s architecture name, weights file and target, checked without torch."""
    backbone = resolve_arch(arch, "--arch")
    file = require_kind(source, CheckpointError, "--insightface weights", INSIGHTFACE_FIX, TORCH_FILES)
    target = output_path(out, "--out", inputs=(file,))
    if target.exists() and not overwrite:
        raise OutputError(f"--out: '{target}' exists: give another path, or --overwrite to replace it")
    return ImportInputs(file, backbone, target)


def check_verify(
    model: str | Path,
    image1: str | Path,
    image2: str | Path,
    threshold: float | None,
    inputs: InputOptions = InputOptions(),
) -> ModelFile:
    """``facetrain verify``'s model is one to score with (``check_model_input``), both images are files,
    the threshold a cosine."""
    file = check_model_input(model, **inputs._asdict())
    for image in (image1, image2):
        if Path(image).is_dir():
            raise DataError(f"image '{image}' is a folder, not an image: give one image file (embed takes folders)")
        require_file(image, DataError, "image", "check the path")
    check_threshold(threshold, "--threshold")
    return file


def require_exported(path: str | Path) -> Path:
    """``path`` if it is a TorchScript file; a training checkpoint or any other file is one CheckpointError."""
    file = require_file(path, CheckpointError, "model", EXPORTED_FIX, ("model.pt",))
    kind = describe(file)
    if kind == TORCH_ARCHIVE:
        raise CheckpointError(
            f"model '{file}' is {kind}, not an exported model: if it is a training checkpoint, export it "
            f"first with facetrain export --checkpoint {file} --out model.pt"
        )
    if kind != TORCHSCRIPT:
        raise CheckpointError(f"model '{file}' is {kind}, not an exported model: {EXPORTED_FIX}")
    return file


def threshold_from_eval_json(path: str | Path, checkpoint: str | Path | None = None) -> float:
    """The first set's threshold for plain embeddings from a ``facetrain eval --json`` file.

    Eval's headline threshold is tuned on flip-fused embeddings (image + mirror). An exported model
    embeds one image, whose scores are distributed differently, so the "plain" threshold is the one
    that matches what ``verify_pair`` computes.
    """
    fix = "give the file written by facetrain eval --json"
    file = require_file(path, DataError, "eval JSON", fix)
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"'{file}' is not valid JSON (line {exc.lineno}, column {exc.colno}): {fix}") from None
    except (OSError, ValueError) as exc:  # unreadable, or not UTF-8
        raise DataError(f"'{file}' cannot be read as JSON ({type(exc).__name__}): {fix}") from None
    if isinstance(payload, dict) and "ijb" in payload and "sets" not in payload:
        raise DataError(
            f"'{file}' is an IJB report (eval --ijb --json): its thresholds are for template scores, not for "
            "two photos: give the JSON of facetrain eval --pairs (or --suite) on verification pairs"
        )
    try:
        value = payload["sets"][0]["plain"]["threshold"]
    except (LookupError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise DataError(f"'{file}' has no sets[0].plain.threshold ({reason}): {fix}") from None
    check_threshold(value, f"'{file}': sets[0].plain.threshold", DataError)
    evaluated = payload.get("checkpoint")
    if checkpoint is not None and evaluated and Path(evaluated).resolve() != Path(checkpoint).resolve():
        log.warning("the threshold in '%s' was chosen for checkpoint '%s', not '%s'", file, evaluated, checkpoint)
    return float(value)


class EmbedInputs(NamedTuple):
    """What ``facetrain embed`` works on, once checked."""

    root: Path  # the image folder
    out: Path  # the file to write
    paths: list[Path]  # the images under root, sorted
    has_labels: bool  # whether they lie in identity folders


def check_embed(
    images: str | Path,
    out: str | Path,
    checkpoint: str | Path | None,
    model: str | Path | None,
    fmt: str,
    inputs: InputOptions = InputOptions(),
) -> EmbedInputs:
    """The inputs of ``facetrain embed``, once the output name, the folder and the model file are known good."""
    if (checkpoint is None) == (model is None):
        raise ConfigError("give exactly one of --checkpoint or --model")
    if checkpoint is not None and (given := inputs.given()):
        raise ConfigError(
            f"{' and '.join(given)}: the input options describe a foreign --model; a checkpoint carries its "
            "preprocessing: drop them"
        )
    if fmt not in EMBED_FORMATS:
        raise ConfigError(f"unknown output format '{fmt}': use {' or '.join(EMBED_FORMATS)}")
    root, out = Path(images), output_path(out, "--out", writes="an embeddings file")  # before the embedding work
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix != fmt:  # also keeps --out from overwriting an input image
        hint = f"pass --format {suffix}" if suffix in EMBED_FORMATS else f"name it {Path(out).stem}.{fmt}"
        raise ConfigError(f"--out '{out}' is not a .{fmt} file name, and --format is {fmt}: {hint}")
    require_folder(root, DataError, "--images", "give a folder of images or of identity folders")
    paths, has_labels = find_images(root)
    if not paths:
        raise DataError(
            f"no images in '{root}': expected {root}/<image> or {root}/<identity>/<image> "
            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    if checkpoint is not None:
        require_checkpoint(checkpoint)
    else:
        check_model_input(model, **inputs._asdict())
    return EmbedInputs(root, out, paths, has_labels)
