"""A model file to score or embed with, checked without torch: a facetrain export, or a foreign
TorchScript or ONNX embedder and the input options it needs (``--input-size``, ``--mean``, ``--std``,
``--channels``, ``--layout``).

The kind is told by content, never by name: TorchScript is a zip archive with code in it, ONNX one
protobuf ``ModelProto`` (walked at its top level here, so no onnx package is needed), and an export
carries ``facetrain.json`` (a TorchScript extra file, an ONNX ``metadata_props`` entry).
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from facetrain.errors import CheckpointError, ConfigError, brief
from facetrain.files import TORCH_ARCHIVE, TORCHSCRIPT, describe, require_file

METADATA_NAME = "facetrain.json"  # an export's metadata: a TorchScript extra file, an ONNX metadata_props entry

MODEL_FIX = (
    "give a TorchScript or ONNX embedder: a file written by facetrain export, or a foreign one such as "
    "insightface's w600k_r50.onnx"
)
CHANNELS = ("rgb", "bgr")  # as facetrain.models.InputSpec takes them (that module imports torch)
LAYOUTS = ("nchw", "nhwc")
FOREIGN_PIXELS = 127.5  # a foreign model's default mean and std, 0-255 units: (x - 127.5) / 127.5, insightface's
PixelValues = str | float | Sequence[float] | None


class InputOptions(NamedTuple):
    """A foreign model's input options as given on the command line (None: not given)."""

    input_size: int | None = None
    mean: PixelValues = None
    std: PixelValues = None
    channels: str | None = None
    layout: str | None = None

    def given(self) -> list[str]:
        """The options given, spelt as on the command line."""
        return [f"--{name.replace('_', '-')}" for name, value in self._asdict().items() if value is not None]


class ModelFile(NamedTuple):
    """A model file to score with, once checked, and the input convention of a foreign one."""

    path: Path
    format: str  # "torchscript" or "onnx"
    exported: bool  # written by facetrain export: it carries its preprocessing in facetrain.json
    input_size: int | None  # None for an export, or for an ONNX model whose fixed input size is read at load
    mean: tuple[float, float, float]  # 0-255 pixel units
    std: tuple[float, float, float]
    channels: str
    layout: str


def check_model_input(
    path: str | Path,
    *,
    input_size: int | None = None,
    mean: PixelValues = None,
    std: PixelValues = None,
    channels: str | None = None,
    layout: str | None = None,
) -> ModelFile:
    """A model file to score with (eval/embed --model, verify's MODEL) and its input options, without torch.

    A facetrain export (TorchScript or ONNX, with ``facetrain.json``) carries its preprocessing, so
    an input option given with one is refused. A foreign model gets mean and std 127.5, RGB and NCHW
    where they are not given; its input size is required, unless it is an ONNX model with a fixed
    one (``facetrain.deploy.load_scorable`` reads that). The kind is told by content, not name.
    """
    options = InputOptions(input_size, mean, std, channels, layout)
    file = require_file(path, CheckpointError, "model", MODEL_FIX, ("model.pt", "model.onnx"))
    fmt, exported = model_format(file)
    if exported and (given := options.given()):
        raise ConfigError(f"'{file}' is a facetrain export and carries its preprocessing: drop {' and '.join(given)}")
    if input_size is not None and (not isinstance(input_size, int) or not 8 <= input_size <= 4096):
        raise ConfigError(f"--input-size: {brief(input_size)} is not a side in 8..4096: give the model's, such as 112")
    checked = ModelFile(
        file, fmt, exported, input_size, pixel_values(mean, "--mean"), pixel_values(std, "--std"),
        _choice(channels, CHANNELS, "--channels"), _choice(layout, LAYOUTS, "--layout"),
    )  # fmt: skip
    if fmt == "torchscript" and not exported and input_size is None:
        raise ConfigError(
            f"--input-size: model '{file}' is not a facetrain export, so its input size is unknown: "
            "give --input-size (112 for insightface's models)"
        )
    return checked


def model_format(file: Path) -> tuple[str, bool]:
    """("torchscript" or "onnx", whether facetrain export wrote it); any other file is one CheckpointError."""
    kind = describe(file)
    if kind == TORCHSCRIPT:
        with zipfile.ZipFile(file) as archive:  # describe opened it already
            return "torchscript", any(name.endswith(f"/extra/{METADATA_NAME}") for name in archive.namelist())
    if kind == TORCH_ARCHIVE:
        raise CheckpointError(
            f"model '{file}' is {kind}, not an exported model: to score a training checkpoint pass "
            f"--checkpoint {file} (eval, embed), or export it first with facetrain export --checkpoint {file} "
            "--out model.pt"
        )
    keys = onnx_metadata_keys(file)
    if keys is None:
        raise CheckpointError(f"model '{file}' is {kind}, not an exported model: {MODEL_FIX}")
    return "onnx", METADATA_NAME in keys


def pixel_values(value: PixelValues, option: str) -> tuple[float, float, float]:
    """A mean or std in 0-255 pixel units: one value or three ("127.5", "123.7,116.3,103.5", a number or
    a sequence) -> three; None -> 127.5 each. One ConfigError line for anything else."""
    if value is None:
        return (FOREIGN_PIXELS,) * 3
    parts = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
    try:
        numbers = [float(part) for part in ([parts] if isinstance(parts, (int, float)) else parts)]
    except (TypeError, ValueError):
        numbers = []
    if isinstance(value, bool) or len(numbers) not in (1, 3) or not all(map(math.isfinite, numbers)):
        raise ConfigError(
            f"{option}: {brief(value)} is not one number or three: give 0-255 pixel values such as 127.5 "
            "or 123.7,116.3,103.5"
        )
    if option == "--mean" and not all(0 <= number <= 255 for number in numbers):
        raise ConfigError(f"{option}: {brief(value)} is outside 0..255: give 0-255 pixel values such as 127.5")
    if option == "--std" and not all(number > 0 for number in numbers):
        raise ConfigError(f"{option}: {brief(value)} has a value <= 0: give positive numbers such as 127.5")
    # torchvision-style values (0.5, or ImageNet's 0.485 and 0.229) in 0-1 units; a std of 1 is MXNet's, and valid.
    if max(numbers) < 1 if option == "--std" else all(0 < number <= 1 for number in numbers):
        scaled = ",".join(f"{number * 255:g}" for number in numbers)
        raise ConfigError(
            f"{option}: {brief(value)} looks like 0-1 units, and facetrain takes 0-255 pixel units: "
            f"give {option} {scaled}"
        )
    return (numbers[0],) * 3 if len(numbers) == 1 else (numbers[0], numbers[1], numbers[2])


def _choice(value: str | None, choices: tuple[str, ...], option: str) -> str:
    """``value`` lower-cased if it is one of ``choices``; None -> the first."""
    if value is None:
        return choices[0]
    if value.lower() not in choices:
        raise ConfigError(f"{option}: unknown value {brief(value)}: choose one of {', '.join(choices)}")
    return value.lower()


# ModelProto's top-level fields and their protobuf wire types (0: varint, 2: length-delimited):
# ir_version, producer_name/version, domain, model_version, doc_string, graph, opset_import,
# metadata_props (14), training_info, functions, configuration.
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_METADATA_PROPS = 14
_LARGEST_ENTRY = 1 << 20  # a metadata entry longer than this is skipped unread


def onnx_metadata_keys(file: Path) -> list[str] | None:
    """The keys of an ONNX model's metadata_props, or None when ``file`` is not an ONNX model.

    An ONNX file is one protobuf ModelProto, whose top level is a dozen fields at most: walking their
    tags and lengths to the end of the file (seeking past the graph) tells one from any other file,
    reads no weights and needs no onnx package.
    """
    try:
        size = file.stat().st_size
        with file.open("rb") as stream:
            keys: list[str] = []
            fields: set[int] = set()
            while stream.tell() < size:
                tag = _varint(stream.read)
                value = _varint(stream.read) if tag is not None else None
                if tag is None or value is None or _ONNX_FIELDS.get(tag >> 3) != tag & 7:
                    return None
                fields.add(tag >> 3)
                if tag & 7 == 2 and stream.tell() + value > size:
                    return None
                if tag >> 3 == _METADATA_PROPS and value <= _LARGEST_ENTRY:
                    keys.append(_entry_key(stream.read(value)))
                elif tag & 7 == 2:
                    stream.seek(value, 1)
    except OSError:
        return None
    return keys if {1, 7} <= fields else None  # ir_version and graph: every model has both


def _varint(read: Callable[[int], bytes]) -> int | None:
    """A protobuf varint read a byte at a time; None at the end of the data or past 64 bits."""
    value = 0
    for shift in range(0, 64, 7):
        byte = read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def _entry_key(data: bytes) -> str:
    """The key (field 1) of a StringStringEntryProto; "" if it has none."""
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        tag, length = _varint(stream.read), _varint(stream.read)
        if tag is None or length is None or tag & 7 != 2:
            return ""
        chunk = stream.read(length)
        if tag >> 3 == 1:
            return chunk.decode("utf-8", "replace")
    return ""
