"""Exporting a checkpoint's embedder for deployment, and scoring a pair of faces with the result.

Only the embedder is exported (the margin head never runs at inference), with L2 normalisation on
its output so that cosine similarity is a dot product. Every export is reloaded from disk and
compared with the eager model before it is moved into place.
"""

from __future__ import annotations

import importlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.data import Aligner, Preprocess
from facetrain.deploy.deployed import METADATA_NAME, ModelMetadata
from facetrain.deploy.inputs import INSIGHTFACE_FORMAT, check_export, check_verify
from facetrain.deploy.model_file import InputOptions
from facetrain.deploy.scorable import load_scorable
from facetrain.errors import CheckpointError, ConfigError, ShapeError
from facetrain.files import atomic_write
from facetrain.models import load_model

log = logging.getLogger("facetrain")

ONNX_OPSET = 18
ONNX_EXTRA = "--format onnx needs the onnx extra ({} is not installed): pip install 'facetrain[onnx]'"
# Two different sizes: a graph with the batch size baked in fails one of them.
RANDOM_BATCHES = (4, 3)


class NormalizedEmbedder(nn.Module):
    """Embedder followed by L2 normalisation: (N, 3, H, W) normalised images -> (N, D) unit rows."""

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedder(images), dim=1)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float | None  # exported vs eager model; None when parity was not checked
    parity_checked: bool
    metadata: ModelMetadata
    note: str


@dataclass(frozen=True)
class VerifyResult:
    score: float  # cosine similarity, in [-1, 1]
    threshold: float | None
    same: bool | None  # None when no threshold is known
    threshold_source: str  # "argument", "model metadata" or "none"


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "torchscript",
    *,
    threshold: float | None = None,
    sample_images: list[Path] | None = None,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Writes the checkpoint's embedder to ``out`` after checking it matches the eager model.

    Args:
        checkpoint: A checkpoint written by ``facetrain train``.
        out: Destination file; replaced only when the export passes its parity check.
        fmt: ``torchscript`` or ``onnx``.
        threshold: Verification threshold to store in the metadata (from ``facetrain eval``).
        sample_images: Images for the parity check; a seeded random batch when not given.
        tolerance: Largest acceptable absolute difference between exported and eager outputs.

    Raises:
        ConfigError: Unknown format, or the ONNX packages are missing.
        ShapeError: The exported model's outputs differ from the eager model's (nothing is written).
    """
    target = check_export(checkpoint, out, fmt, threshold)
    if fmt == INSIGHTFACE_FORMAT:
        raise ConfigError("--format insightface writes weights, not a model: use facetrain.deploy.export_insightface")
    onnx = _import_onnx() if fmt == "onnx" else None  # fail before the slow part
    loaded = load_model(checkpoint, torch.device("cpu"))
    model = NormalizedEmbedder(loaded.embedder).eval()
    metadata = ModelMetadata.from_config(loaded.config, threshold)
    batches = _parity_batches(loaded.preprocess, sample_images)
    with atomic_write(target, "--out") as temp:
        if onnx is None:
            _write_torchscript(model, temp, metadata)
            with _quiet_jit():
                reloaded = torch.jit.load(str(temp), map_location="cpu").eval()
            run: Callable[[torch.Tensor], torch.Tensor] | None = reloaded
        else:
            example = batches[0][:1].repeat(2, 1, 1, 1)  # two rows: torch.export specialises a batch of 1
            _write_onnx(model, temp, metadata, onnx, example)
            run = _onnx_runner(temp)
        # Check the temporary file before the rename, so a failed export never replaces a good one.
        diff = _max_abs_diff(model, run, batches) if run is not None else None
        if diff is not None and not diff <= tolerance:  # written so that NaN fails too
            raise ShapeError(
                f"export parity failed: max abs difference {diff:.3g} > {tolerance:g} between the "
                f"{fmt} file and checkpoint '{checkpoint}'; file removed: report this as a facetrain bug"
            )
    checked = run is not None
    sizes = " and ".join(str(len(batch)) for batch in batches)
    note = f"parity checked on batches of {sizes}" if checked else "parity not checked: onnxruntime is not installed"
    return ExportResult(target, fmt, diff, checked, metadata, note)


def verify_pair(
    model_path: str | Path,
    image1: str | Path,
    image2: str | Path,
    threshold: float | None = None,
    align: tuple[int, int] | None = None,
    inputs: InputOptions = InputOptions(),
) -> VerifyResult:
    """Cosine similarity of two face images under a model file: a facetrain export, or a foreign
    TorchScript or ONNX embedder fed as ``inputs`` say (see ``load_scorable``).

    An export's images get the preprocessing stored in its metadata, which is the training one;
    with ``align`` (a crop's width and height), each photo's face is first detected and aligned onto
    the ArcFace template of that size.
    The threshold is ``threshold`` when given, else the one stored at export, else none.
    """
    check_verify(model_path, image1, image2, threshold, inputs)
    model = load_scorable(model_path, torch.device("cpu"), **inputs._asdict())
    preprocess = model.preprocess
    if align is not None:
        aligner = Aligner(size=align)
        load = lambda path: preprocess.pixels(aligner.crop_file(path), source=str(path))  # noqa: E731
    else:
        load = preprocess.load_pixels
    pixels = torch.stack([load(image1), load(image2)])  # (2, 3, S, S) uint8
    with torch.no_grad():
        embeddings = F.normalize(model(pixels).float(), dim=1)
    score = float(embeddings[0] @ embeddings[1])
    if not math.isfinite(score):
        fix = "export it again from a checkpoint whose training did not diverge" if model.metadata else "check it"
        raise CheckpointError(
            f"model '{model_path}' gives NaN embeddings (its weights hold NaN or infinite values): {fix}"
        )
    stored = model.metadata.threshold if model.metadata is not None else None
    if threshold is not None:
        source = "argument"
    elif stored is not None:
        threshold, source = stored, "model metadata"
    else:
        source = "none"
    same = score >= threshold if threshold is not None else None  # eval's rule: same when score >= threshold
    return VerifyResult(score, threshold, same, source)


def _parity_batches(preprocess: Preprocess, sample_images: list[Path] | None) -> list[torch.Tensor]:
    """Two batches of different sizes, from the sample images or seeded noise in [-1, 1]."""
    if sample_images:
        first = torch.stack([preprocess.load(path) for path in sample_images])
        second = first[:-1] if len(first) > 1 else first.repeat(2, 1, 1, 1)
        return [first, second]
    generator = torch.Generator().manual_seed(0)
    size = preprocess.image_size
    return [torch.rand(n, 3, size, size, generator=generator) * 2 - 1 for n in RANDOM_BATCHES]


def _max_abs_diff(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor]) -> float:
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            expected, got = model(batch), run(batch)
            if got.shape != expected.shape:  # broadcasting would hide a wrong batch size
                return math.inf
            diff = float((got - expected).abs().max())
            worst = diff if math.isnan(diff) else max(worst, diff)  # max(0.0, nan) would hide a NaN
            if math.isnan(worst):
                return worst
    return worst


def _write_torchscript(model: nn.Module, path: Path, metadata: ModelMetadata) -> None:
    # Script rather than trace: scripting keeps the batch dimension dynamic.
    with _quiet_jit():
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(path), _extra_files={METADATA_NAME: metadata.to_json()})


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silences torch's deprecation notice for torch.jit, which would only puzzle a CLI user.

    TorchScript is still what a service without facetrain can load with plain ``torch.jit.load``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def _import_onnx() -> ModuleType:
    """The ``onnx`` module, once ``onnxscript`` (torch's ONNX exporter runs on it) imports too."""
    try:
        importlib.import_module("onnxscript")
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise ConfigError(ONNX_EXTRA.format(exc.name or "onnx")) from None


def _write_onnx(model: nn.Module, path: Path, metadata: ModelMetadata, onnx: ModuleType, example: torch.Tensor) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model, (example,), input_names=["images"], output_names=["embeddings"], opset_version=ONNX_OPSET,
        dynamo=True, dynamic_shapes={"images": {0: batch}}, verbose=False,
    )  # fmt: skip
    proto = program.model_proto
    entry = proto.metadata_props.add()  # appended: keeps whatever the exporter recorded
    entry.key, entry.value = METADATA_NAME, metadata.to_json()
    onnx.save_model(proto, str(path))


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An onnxruntime session as a tensor function, or None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(["embeddings"], {"images": images.numpy()})[0])
