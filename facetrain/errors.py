"""Domain errors. Each message says what is wrong, where, and how to fix it.

The CLI turns any ``FacetrainError`` into one message and exit code 2; every other
exception is a bug and keeps its traceback.
"""

import reprlib
from typing import Any

_WORKER_MARKER = "Original Traceback (most recent call last):"
_BRIEF = reprlib.Repr()  # every limit small: a message shows the start of a value, never all of it
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 2, 60, 60, 40
_BRIEF.maxtuple = _BRIEF.maxlist = _BRIEF.maxdict = _BRIEF.maxset = 4


class FacetrainError(Exception):
    """Base class for errors caused by the user's input (config, files, data, checkpoints).

    ``shared``: in a multi-process run every rank raises the same error at the same point (it comes
    from values that every rank holds), so only the main rank shows it.
    """

    shared = False

    def __init__(self, message: str) -> None:
        # DataLoader workers re-raise as ``type(exc)(text_with_worker_traceback)``; keep only
        # our own message (the last line of that text) so the user still sees one line.
        if _WORKER_MARKER in message:
            last = message.strip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


class ConfigError(FacetrainError):
    """A config file, key, value or override is invalid."""


class DataError(FacetrainError):
    """A dataset folder, image or split is unusable."""


class CheckpointError(FacetrainError):
    """A checkpoint is missing, unreadable, or does not match the config."""


class ShapeError(FacetrainError):
    """A model shape cannot work with the config (image size, pool size, weights file)."""


class TrainingError(FacetrainError):
    """Training cannot go on with these settings (for example, the loss became NaN)."""


class PeerFailed(FacetrainError):
    """Another rank of a multi-process run failed and reported why; this rank exits quietly (code 2)."""

    shared = True


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or torchrun's stop), raised where Ctrl-C would be so the same clean-up runs."""


class OutputError(FacetrainError):
    """An output file or folder cannot be written (permissions, a full disk, a folder in the way)."""


def brief(value: Any) -> str:
    """A user's value for a message, bounded in length whatever its size (YAML spelling for scalars).

    Never format a user's value into a message with ``repr`` or an f-string: a YAML alias bomb or a
    100 MB string would be expanded in full.
    """
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _BRIEF.repr(value)
