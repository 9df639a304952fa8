"""Atomic, weights-only checkpoints.

A checkpoint holds tensors and primitives only, so ``torch.load(weights_only=True)`` reads it
and nothing in it can run code. It is written to a temporary file in the same folder and then
renamed over the old one, so a crash or Ctrl-C mid-save leaves the last good file intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from facetrain import __version__
from facetrain.errors import CheckpointError, FacetrainError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "num_classes", "embedder", "head")
# Config keys that change the model's shapes or its input: a checkpoint cannot be resumed across them.
STRUCTURAL_KEYS = (
    "model.backbone",
    "model.embedding_dim",
    "model.pool_size",
    "head.type",
    "data.image_size",
    "data.center_crop",
)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Writes ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "facetrain_version": __version__, **state}
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


def read_tensors(file: Path, error: type[FacetrainError], what: str, fix: str) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a missing or unreadable file becomes one ``error`` line."""
    if not file.is_file():
        raise error(f"{what} '{file}' not found: {fix}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to unpickle safely means the file is unusable
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{what} '{file}' cannot be read safely ({reason}): {fix}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a facetrain checkpoint with ``weights_only=True`` and checks its layout."""
    file = Path(path)
    state = read_tensors(file, CheckpointError, "checkpoint", "give the path of a last.pt written by facetrain train")
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"checkpoint '{file}' is not a facetrain checkpoint (missing {', '.join(missing)})")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{file}' has format {state['format_version']}, newer than this facetrain "
            f"({__version__}) reads: upgrade facetrain"
        )
    return state


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, checkpoint value, current value) for every key that differs."""
    old, new = flatten(saved), flatten(current)
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_resumable(file: str | Path, saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Raises on structural differences; returns human-readable lines for the harmless ones."""
    changes = config_differences(saved, current)
    for key, was, now in changes:
        if key in STRUCTURAL_KEYS:
            raise CheckpointError(
                f"checkpoint '{file}' has {key} {was!r}, config says {now!r}: "
                f"set {key}: {was!r} to resume, or start a new run without --resume"
            )
    return [f"{key}: {was!r} -> {now!r}" for key, was, now in changes]
