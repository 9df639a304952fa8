"""The single error boundary of the command line, and the ``facetrain`` logger's handler.

Every command is wrapped by ``error_boundary``: a ``FacetrainError`` becomes one message on stderr
and exit code 2 (``FACETRAIN_DEBUG=1`` shows the traceback); any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import typer

from facetrain.errors import FacetrainError


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
