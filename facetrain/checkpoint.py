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
import yaml

from facetrain import __version__
from facetrain.errors import CheckpointError, FacetrainError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "num_classes", "embedder", "head")
RESUME_KEYS = ("class_names", "optimizer", "scheduler", "scaler", "epoch", "batch_in_epoch", "step", "rng")
# Config keys that change the model's shapes, its input or the optimizer's state layout:
# a checkpoint cannot be resumed across them.
STRUCTURAL_KEYS = (
    "model.backbone", "model.embedding_dim", "model.pool_size", "head.type", "head.k",
    "data.image_size", "data.center_crop", "train.optimizer",
)  # fmt: skip
# Keys that fix which samples make up each step: changing them mid-epoch would skip or repeat data.
ORDER_KEYS = ("seed", "train.batch_size", "train.grad_accum_steps")


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
        os.chmod(temp_name, usual_file_mode())
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
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{file}' holds a {type(state).__name__}, not a facetrain checkpoint")
    require_keys(state, REQUIRED_KEYS, file, "a facetrain checkpoint")
    if not isinstance(state["format_version"], int) or not isinstance(state["config"], dict):
        raise CheckpointError(f"checkpoint '{file}' has a malformed header: it is not a facetrain checkpoint")
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

    def same(a: Any, b: Any) -> bool:  # 1 (pixels) and 1.0 (whole image) differ for center_crop
        return a == b and type(a) is type(b)

    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if not same(old.get(k), new.get(k))]


def require_keys(state: dict[str, Any], keys: tuple[str, ...], file: str | Path, purpose: str) -> None:
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint '{file}' lacks {', '.join(missing)}, so it cannot be used as {purpose}")


def check_resumable(file: str | Path, saved: dict[str, Any], current: dict[str, Any], mid_epoch: bool) -> list[str]:
    """Raises on changes that resuming cannot honour; returns readable lines for the harmless ones."""
    changes = config_differences(saved, current)
    # In STRUCTURAL_KEYS order, so a change of head.type is named rather than the head.k it implies.
    refused = sorted(
        (change for change in changes if change[0] in STRUCTURAL_KEYS or (mid_epoch and change[0] in ORDER_KEYS)),
        key=lambda change: (STRUCTURAL_KEYS + ORDER_KEYS).index(change[0]),
    )
    if refused:
        key, was, now = refused[0]
        when = " in the middle of an epoch" if key in ORDER_KEYS else ""
        raise CheckpointError(
            f"checkpoint '{file}' has {key} {_yaml(was)}, config says {_yaml(now)}, which cannot change{when}: "
            f"set {key}: {_yaml(was)} to resume, or start a new run without --resume"
        )
    return [f"{key}: {was!r} -> {now!r}" for key, was, now in changes]


def _yaml(value: Any) -> str:
    """A config value as YAML writes it (null, true, 0.5, resnet50)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def usual_file_mode() -> int:
    """0666 less the umask: what ``open()`` would give. mkstemp creates 0600 files."""
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask
