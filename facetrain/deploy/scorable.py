"""Any model file as a ``PixelEmbedder``: facetrain's exports and foreign TorchScript or ONNX embedders.

``load_scorable`` tells the file by its content (``facetrain.deploy.model_file``), builds the
``InputSpec`` it is fed with (an export's own metadata, or a foreign model's options), and probes
the model once with two images, so that an input it cannot take, or an output that is not one
embedding per image, is one line before any real work. ONNX models run in onnxruntime (the
``onnx`` extra): an ONNX file is a graph of operators, and running one is a runtime's job.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from facetrain.deploy.deployed import METADATA_NAME, ModelMetadata, read_torchscript
from facetrain.deploy.model_file import MODEL_FIX, ModelFile, PixelValues, check_model_input
from facetrain.errors import CheckpointError, ConfigError, FacetrainError, ShapeError
from facetrain.models import InputSpec, PixelEmbedder

log = logging.getLogger("facetrain")

ONNX_EXTRA = 'scoring an ONNX model needs onnxruntime, which is not installed: pip install -e ".[onnx]"'
PROBE_IMAGES = 2  # two, not one: a graph with a batch of one baked in shows here (and is then fed one at a time)
SIZE_FIX = "give --input-size (112 for insightface's models)"
_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class ScorableModel(PixelEmbedder):
    """A model file fed uint8 RGB pixels: (N, 3, S, S) -> ``spec``'s input -> the model -> (N, D) float32.

    ``metadata`` is an export's (its threshold, for verify), None for a foreign model; ``embedding_dim``
    is D, read by the probe at load. Exports are ``normalised``; a foreign model is when the probe's
    outputs have unit norm.
    """

    def __init__(self, file: ModelFile, spec: InputSpec, device: torch.device, metadata: ModelMetadata | None) -> None:
        self.file, self.spec, self.metadata, self.device = file, spec, metadata, device
        self.name, self.preprocess = file.path.name, spec.preprocess
        self.normalised, self.embedding_dim = metadata is not None, 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.run(self.spec.tensor(pixels))

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model on inputs already in its convention (``spec.tensor``'s output)."""
        raise NotImplementedError

    def check_rows(self, shape: tuple[int, ...], rows: int) -> None:
        if len(shape) != 2 or shape[0] != rows or shape[1] < 1:
            raise ShapeError(
                f"model '{self.file.path}' returns an output of shape {tuple(shape)} for {rows} images, expected "
                f"({rows}, D), one embedding per image: give an embedder (the network up to its embedding layer)"
            )


class ScriptEmbedder(ScorableModel):
    """A TorchScript model, run in torch on ``device``."""

    def __init__(self, module: torch.jit.ScriptModule, file: ModelFile, spec: InputSpec, device: torch.device,
                 metadata: ModelMetadata | None) -> None:  # fmt: skip
        super().__init__(file, spec, device, metadata)
        self.module = module
        # A model saved in half precision takes half-precision input.
        self.dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        output = self.module(inputs.to(self.dtype))
        if not isinstance(output, torch.Tensor):
            raise ShapeError(
                f"model '{self.file.path}' returns a {type(output).__name__}, not a tensor: give an embedder "
                "that returns one (N, D) tensor"
            )
        self.check_rows(tuple(output.shape), len(inputs))
        return output.float()

    def prepare(self) -> Callable[[], None]:
        self.module.eval()
        return lambda: None


class OnnxEmbedder(ScorableModel):
    """An ONNX model in an onnxruntime session; a batch size fixed in the graph is fed in chunks of it.

    Inputs go through the CPU (``device`` is the CPU): onnxruntime copies them to its own device.
    """

    def __init__(self, session: Any, file: ModelFile, spec: InputSpec, metadata: ModelMetadata | None,
                 batch: int | None, dtype: type) -> None:  # fmt: skip
        super().__init__(file, spec, torch.device("cpu"), metadata)
        self.session, self.batch, self.dtype = session, batch, dtype
        self.input_name, self.output_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().cpu().numpy().astype(self.dtype, copy=False)
        step = self.batch or max(len(array), 1)
        chunks = []
        for start in range(0, len(array), step):
            chunk = array[start : start + step]
            output = np.asarray(self.session.run([self.output_name], {self.input_name: chunk})[0])
            self.check_rows(output.shape, len(chunk))
            chunks.append(torch.from_numpy(output).float())
        return torch.cat(chunks) if chunks else torch.empty(0, self.embedding_dim)


def load_scorable(
    path: str | Path,
    device: torch.device,
    *,
    input_size: int | None = None,
    mean: PixelValues = None,
    std: PixelValues = None,
    channels: str | None = None,
    layout: str | None = None,
) -> ScorableModel:
    """A model file to score or embed with, loaded and probed: a facetrain export (TorchScript or ONNX,
    fed as its metadata says) or a foreign TorchScript or ONNX embedder (fed as the options say).

    Args:
        path: The model file; its kind is read from its content.
        device: Where a TorchScript model runs; an ONNX model uses onnxruntime's CUDA provider on a
            GPU device when it has one, else the CPU.
        input_size, mean, std, channels, layout: A foreign model's input, as ``check_model_input``
            takes them (defaults: 127.5, 127.5, rgb, nchw; the size of an ONNX model with a fixed one).

    Raises:
        CheckpointError: Not a model file (a training checkpoint, an image...), or a damaged one.
        ConfigError: A bad option, an option given with an export, onnxruntime missing.
        ShapeError: The model does not take the input so described, or returns no (N, D) embeddings.
    """
    file = check_model_input(path, input_size=input_size, mean=mean, std=std, channels=channels, layout=layout)
    model = _load_onnx(file, device) if file.format == "onnx" else _load_torchscript(file, device)
    _probe(model)
    return model


def _load_torchscript(file: ModelFile, device: torch.device) -> ScriptEmbedder:
    module, text = read_torchscript(file.path, device, MODEL_FIX)
    if file.exported and not text:  # check_model_input saw the entry; an empty one is damage
        raise CheckpointError(f"model '{file.path}': its {METADATA_NAME} is empty: re-export the model")
    metadata = ModelMetadata.from_json(text, str(file.path)) if text else None
    if metadata is not None:
        spec = metadata.input_spec
    elif file.input_size is None:
        raise ConfigError(f"--input-size: model '{file.path}' is a foreign TorchScript model: {SIZE_FIX}")
    else:
        spec = InputSpec(file.input_size, None, file.mean, file.std, file.channels, file.layout)
    return ScriptEmbedder(module, file, spec, device, metadata)


def _load_onnx(file: ModelFile, device: torch.device) -> OnnxEmbedder:
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would only puzzle a CLI user
    try:
        session = ort.InferenceSession(str(file.path), options, providers=_providers(ort, device, file))
    except Exception as exc:  # onnxruntime's own error types: a file that is ONNX on the outside only
        problem = f"model '{file.path}' cannot be loaded by onnxruntime ({_reason(exc)})"
        raise CheckpointError(f"{problem}: {MODEL_FIX}") from None
    if device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        log.warning("onnxruntime could not start its CUDA provider: '%s' runs on the CPU", file.path)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(str(given.name) for given in inputs)
        raise ShapeError(f"model '{file.path}' takes {len(inputs)} inputs ({names}): facetrain feeds one image batch")
    dtype = _ONNX_DTYPES.get(inputs[0].type)
    if dtype is None:
        raise ShapeError(f"model '{file.path}' takes {inputs[0].type} input: facetrain feeds float images")
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_NAME)
    metadata = ModelMetadata.from_json(text, str(file.path)) if text else None
    spec, batch = _onnx_spec(file, list(inputs[0].shape), metadata)
    return OnnxEmbedder(session, file, spec, metadata, batch, dtype)


def _onnx_spec(file: ModelFile, shape: list[Any], metadata: ModelMetadata | None) -> tuple[InputSpec, int | None]:
    """The input spec for an ONNX input of ``shape`` (ints where fixed), and its fixed batch size if any."""
    where = f"model '{file.path}' expects input {_dims(shape)}"
    if len(shape) != 4:
        raise ShapeError(f"{where}: facetrain feeds images, N x 3 x S x S (NCHW) or N x S x S x 3 (--layout nhwc)")
    layout = "nchw" if metadata is not None else file.layout
    channel_at, other_at, spatial = (1, 3, shape[2:]) if layout == "nchw" else (3, 1, shape[1:3])
    channels = _fixed(shape[channel_at])
    if channels is not None and channels != 3:
        swap = "nhwc" if layout == "nchw" else "nchw"
        fix = f"use --layout {swap}" if _fixed(shape[other_at]) == 3 else "give a model of 3-channel images"
        raise ShapeError(f"{where}, {channels} channels as {layout.upper()}: facetrain feeds 3 channels: {fix}")
    height, width = _fixed(spatial[0]), _fixed(spatial[1])
    if height is not None and width is not None and height != width:
        raise ShapeError(f"{where} ({layout.upper()}), {height}x{width} images: facetrain feeds square images")
    fixed = height or width
    size = metadata.image_size if metadata is not None else file.input_size or fixed
    if size is None:
        raise ConfigError(f"--input-size: model '{file.path}' has no fixed input size: {SIZE_FIX}")
    if fixed is not None and fixed != size:
        got = _dims(["N", 3, size, size] if layout == "nchw" else ["N", size, size, 3])
        source, fix = (
            ("its metadata", "re-export it") if metadata else (f"--input-size {size}", f"use --input-size {fixed}")
        )
        raise ShapeError(f"{where} ({layout.upper()}), got {got} from {source}: {fix}")
    if metadata is not None:
        return metadata.input_spec, _fixed(shape[0])
    return InputSpec(size, None, file.mean, file.std, file.channels, file.layout), _fixed(shape[0])


def _probe(model: ScorableModel) -> None:
    """Runs the model once on two images: one line, now, for an input it cannot take or a wrong output."""
    size = model.spec.size
    pixels = torch.randint(0, 256, (PROBE_IMAGES, 3, size, size), generator=torch.Generator().manual_seed(0))
    inputs = model.spec.tensor(pixels.to(torch.uint8).to(model.device))
    restore = model.prepare()
    try:
        with torch.no_grad():
            features = model.run(inputs)
    except FacetrainError:
        raise
    except Exception as exc:  # the model's own error, from the TorchScript interpreter or onnxruntime
        shape = "x".join(str(dim) for dim in inputs.shape)
        what = f"model '{model.file.path}' fails on a {shape} batch ({model.spec.layout.upper()}): {_reason(exc)}"
        if model.metadata is not None:
            raise CheckpointError(f"{what}: the export is damaged: export it again") from None
        raise ShapeError(
            f"{what}: check --input-size and --layout, and that it is an embedder of one image batch"
        ) from None
    finally:
        restore()
    model.embedding_dim = int(features.shape[1])
    if model.metadata is not None and model.metadata.embedding_dim != model.embedding_dim:
        raise CheckpointError(
            f"model '{model.file.path}' returns {model.embedding_dim}-d embeddings, and its {METADATA_NAME} says "
            f"{model.metadata.embedding_dim}: the export is damaged: export it again"
        )
    norms = features.norm(dim=1)
    model.normalised = model.metadata is not None or bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4))


def _providers(ort: ModuleType, device: torch.device, file: ModelFile) -> list[Any]:
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = device.index if device.index is not None else torch.cuda.current_device()
            return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        log.warning("onnxruntime has no CUDA provider here (onnxruntime-gpu has one): '%s' runs on the CPU", file.path)
    return ["CPUExecutionProvider"]


def _import_onnxruntime() -> ModuleType:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise ConfigError(ONNX_EXTRA) from None


def _fixed(dim: Any) -> int | None:
    """An ONNX dimension's size when the graph fixes it (an int); None for a named or unknown one."""
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def _dims(shape: list[Any]) -> str:
    """[None, 3, 112, 112] -> "Nx3x112x112": a dimension the graph leaves open is N (the batch) or ?."""
    return "x".join(str(dim) if _fixed(dim) else ("N" if at == 0 else "?") for at, dim in enumerate(shape))


def _reason(exc: BaseException) -> str:
    """A runtime's error as one short line: TorchScript's last line (after its traceback), ONNX's joined."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if "Traceback of TorchScript" in text else " ".join(lines)
    return line if len(line) <= 300 else line[:297] + "..."
