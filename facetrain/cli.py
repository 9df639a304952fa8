"""Command-line entry points. Each command parses options and calls one library function.

This module is the single error boundary: a ``FacetrainError`` becomes one message on stderr
and exit code 2 (``FACETRAIN_DEBUG=1`` shows the traceback); any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from facetrain import __version__
from facetrain.errors import FacetrainError

app = typer.Typer(
    help="Face-recognition training: torchvision embedder + ArcFace head.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("facetrain")


def error_boundary(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return command(*args, **kwargs)
        except FacetrainError as exc:
            if os.environ.get("FACETRAIN_DEBUG") == "1":
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: checkpoints are replaced atomically, so the last one written is intact",
                err=True,
            )
            raise typer.Exit(130) from None

    return wrapper


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it per call)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _setup_logging() -> None:
    logger = logging.getLogger("facetrain")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set train.lr=0.01 (repeatable)."),
]


@app.command()
@error_boundary
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N (overrides train.device).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue from this last.pt (config optional).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start afresh even if run_dir already holds last.pt.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Show the tqdm bar (default: when stderr is a terminal)."),
    ] = None,
) -> None:
    """Train an embedder with an ArcFace head on an identity-folder dataset.

    Example: facetrain train --config configs/demo.yaml --set train.epochs=5
    """
    from facetrain.config import load_config
    from facetrain.train import config_for_resume
    from facetrain.train import train as run_training

    overrides = list(set_ or []) + ([f"train.device={device}"] if device else [])
    if config is None and resume is None:
        raise typer.BadParameter("give --config FILE, or --resume CHECKPOINT to continue a run")
    cfg = config_for_resume(resume, overrides) if config is None else load_config(config, overrides)
    show_bar = sys.stderr.isatty() if progress is None else progress
    result = run_training(cfg, resume=resume, overwrite=overwrite, progress=show_bar)
    typer.echo(f"checkpoint: {result.checkpoint} (epoch {result.epochs_done}, step {result.steps_done})")
    if result.before is not None and result.after is not None:
        typer.echo(
            f"held-out verification accuracy: {'at resume' if result.resumed else 'before training'} "
            f"{result.before.accuracy:.4f} -> "
            f"after {result.after.accuracy:.4f} (ROC AUC {result.before.auc:.4f} -> {result.after.auc:.4f}; "
            f"{result.after.same_pairs} same / {result.after.different_pairs} different pairs, "
            f"majority baseline {result.after.majority_baseline:.4f})"
        )


@app.command()
def version() -> None:
    """Print the facetrain version.

    Example: facetrain version
    """
    typer.echo(__version__)


def main() -> None:
    app()
