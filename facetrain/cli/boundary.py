"""The single error boundary of the command line, and the ``facetrain`` logger's handler.

Every command is wrapped by ``error_boundary``: a ``FacetrainError`` becomes one message on stderr
and exit code 2 (``FACETRAIN_DEBUG=1`` shows the traceback); any other exception is a bug and
keeps its traceback.

Under torchrun (``RANK`` set) the user reads each message once: an error that every rank raises
alike (a config error before the process group exists, or one that ``distributed.settle`` agreed
on) is shown by the main rank (before the group: each machine's first process); an error of one
rank alone is shown by that rank with its number; an interrupt is announced by the main rank. The
other ranks log warnings only, prefixed with their rank.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import typer

from facetrain.errors import FacetrainError, PeerFailed, Terminated, brief

# OSErrors that a user's path causes; any other OSError is a bug, or a fault that keeps its traceback.
_PATH_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENOTDIR, errno.EROFS, errno.ENOENT}
)


def error_boundary(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            with _sigterm_as_interrupt():
                return command(*args, **kwargs)
        except FacetrainError as exc:
            if os.environ.get("FACETRAIN_DEBUG") == "1":  # the traceback is extra; the exit code stays 2
                traceback.print_exc()
            if not isinstance(exc, PeerFailed):  # the rank that failed has said why
                _say(f"error: {exc}", exc.shared)
            raise typer.Exit(2) from None
        except OSError as exc:  # about a user's path (too long a name, no permission): theirs to fix
            if exc.filename is None or exc.errno not in _PATH_ERRNOS:
                raise
            if os.environ.get("FACETRAIN_DEBUG") == "1":
                traceback.print_exc()
            from facetrain.files import os_reason

            name = brief(os.fsdecode(exc.filename))
            _say(f"error: cannot use {name}: {os_reason(exc)}: check the path and its permissions", shared=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            _say(f"{what}: files are replaced atomically, so none is left half-written", shared=True)
            raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None

    return wrapper


def _rank() -> int | None:
    """This process's rank under torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"])
    except ValueError:
        return None


def _say(message: str, shared: bool) -> None:
    """Prints ``message`` once per run (see the module docstring)."""
    rank = _rank()
    if rank is None:
        typer.echo(message, err=True)
        return
    group = sys.modules.get("facetrain.distributed")
    started = group is not None and group.started()
    if not started:  # before the group: every rank read the same inputs and failed alike
        if os.environ.get("LOCAL_RANK", "0") == "0":
            typer.echo(message, err=True)
    elif shared:
        if rank == 0:
            typer.echo(message, err=True)
    else:
        typer.echo(message if rank == 0 else f"rank {rank}: {message}", err=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in this process, so it cleans up as Ctrl-C does (exit code 143).

    Forked children (DataLoader workers) inherit the handler; they die by the default action instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        # The workers die of the same signal; torch's SIGCHLD handler would turn that into a RuntimeError.
        # A no-op handler, not SIG_DFL: a SIGCHLD already pending would then be an OSError of its own.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    rank = _rank()
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s" if not rank else f"rank {rank}: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if not rank else logging.WARNING)  # other ranks: what matters only
    logger.propagate = False
