"""Option types shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set train.lr=0.01 (repeatable)."),
]

# A model file to score or embed with (facetrain's export, or someone else's TorchScript or ONNX), and
# the input convention of a foreign one. A facetrain export carries its own and refuses these.
ModelFileOption = Annotated[
    Path | None,
    typer.Option("--model", help="A TorchScript or ONNX embedder: facetrain's export, or a foreign one."),
]
InputSizeOption = Annotated[
    int | None, typer.Option("--input-size", min=8, max=4096, help="Foreign model: its square input side (112).")
]
MeanOption = Annotated[
    str | None, typer.Option("--mean", help="Foreign model: pixel mean, 0-255, one value or three (127.5).")
]
StdOption = Annotated[
    str | None, typer.Option("--std", help="Foreign model: pixel std, 0-255, one value or three (127.5).")
]
ChannelsOption = Annotated[str | None, typer.Option("--channels", help="Foreign model: rgb or bgr (rgb).")]
LayoutOption = Annotated[str | None, typer.Option("--layout", help="Foreign model: nchw or nhwc (nchw).")]
