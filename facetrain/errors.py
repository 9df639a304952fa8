"""Domain errors. Each message says what is wrong, where, and how to fix it.

The CLI turns any ``FacetrainError`` into one message and exit code 2; every other
exception is a bug and keeps its traceback.
"""

_WORKER_MARKER = "Original Traceback (most recent call last):"


class FacetrainError(Exception):
    """Base class for errors caused by the user's input (config, files, data, checkpoints)."""

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
