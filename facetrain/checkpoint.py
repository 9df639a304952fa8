"""Atomic, weights-only checkpoints.

A checkpoint holds tensors and primitives only, so ``torch.load(weights_only=True)`` reads it
and nothing in it can run code. It is written to a temporary file in the same folder and then
renamed over the old one, so a crash or Ctrl-C mid-save leaves the last good file intact.

torch is imported where a checkpoint is read or written, not with the module: ``require_checkpoint``
answers a wrong path before torch is loaded.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import yaml

from facetrain import __version__
from facetrain.errors import CheckpointError, FacetrainError, brief
from facetrain.files import TORCH_ARCHIVE, describe, require_kind, write_stream

FORMAT_VERSION = 1
# What torch.load can read: a torch.save archive, or the legacy pickle format (refused later, but named).
TORCH_FILES = (TORCH_ARCHIVE, "a Python pickle")
CHECKPOINT_FIX = "give the path of a last.pt or best.pt written by facetrain train"
# What every checkpoint holds. One written by ``facetrain train`` holds the margin head too (HEAD_KEYS);
# one written by ``facetrain import`` holds the embedder only, and says where it came from ("origin").
REQUIRED_KEYS = ("format_version", "config", "embedder")
HEAD_KEYS = ("num_classes", "head")
RESUME_KEYS = ("class_names", "optimizer", "scheduler", "scaler", "epoch", "batch_in_epoch", "step", "rng")
# Config keys that change the model's shapes, its input or the optimizer's state layout:
# a checkpoint cannot be resumed across them.
STRUCTURAL_KEYS = (
    "model.backbone", "model.embedding_dim", "model.pool_size", "head.type", "head.k",
    "data.image_size", "data.center_crop", "train.optimizer",
)  # fmt: skip
# Keys that fix which samples make up each step: changing them mid-epoch would skip or repeat data.
ORDER_KEYS = ("seed", "train.batch_size", "train.grad_accum_steps")


def save_checkpoint(state: dict[str, Any], path: str | Path, intact: str = "", option: str = "run_dir") -> Path:
    """Writes ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    A full disk or an unwritable folder is one ``OutputError`` line, naming ``option``, that says ``intact``
    (which file is still good); a Ctrl-C mid-write stays a KeyboardInterrupt.
    """
    import torch  # here, not at the top: checking a path must not cost torch's import

    payload = {"format_version": FORMAT_VERSION, "facetrain_version": __version__, **state}
    return write_stream(path, lambda stream: torch.save(payload, stream), option, intact)


def read_tensors(
    file: Path, error: type[FacetrainError], what: str, fix: str, look_for: tuple[str, ...] = (), mmap: bool = False
) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a missing, wrong or unreadable file becomes one ``error`` line.

    torch's own advice (re-run with ``weights_only=False``; "your checkpoint file is corrupted") never
    reaches the user: the message says what the file is instead.
    """
    require_kind(file, error, what, fix, TORCH_FILES, look_for)
    import torch

    # torch's legacy format (torch.save before 1.6, or _use_new_zipfile_serialization=False) is read the same
    # safe way, but cannot be memory-mapped: it is read whole.
    mmap = mmap and describe(file) == TORCH_ARCHIVE
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol and TorchScript notices: the error says more
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # any failure to unpickle safely means the file is unusable
        raise error(f"{what} '{file}' cannot be used: {_load_problem(file, exc)}: {fix}") from None


def _load_problem(file: Path, exc: Exception) -> str:
    kind = describe(file)
    unsafe = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if unsafe:
        return f"it holds Python objects ({unsafe.group(1)}), which facetrain never unpickles (only tensors and values)"
    if kind == "a Python pickle":
        return "it is a Python pickle that is not a torch.save file, or a damaged one"
    if "Weights only load failed" in str(exc):
        return "it holds Python objects, which facetrain never unpickles (only tensors and values)"
    return f"it is {kind} that is truncated or damaged"


def require_checkpoint(path: str | Path) -> Path:
    """What ``load_checkpoint`` checks before reading: the file is there and torch can read its kind."""
    return require_kind(path, CheckpointError, "checkpoint", CHECKPOINT_FIX, TORCH_FILES, ("last.pt", "best.pt"))


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Reads a facetrain checkpoint with ``weights_only=True`` and checks its layout.

    ``mmap``: tensors stay in the file until touched (a rank that keeps a slice reads only the slice).
    """
    file = Path(path)
    state = read_tensors(file, CheckpointError, "checkpoint", CHECKPOINT_FIX, ("last.pt", "best.pt"), mmap)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{file}' holds a {type(state).__name__}, not a facetrain checkpoint")
    if _bare_weights(state):
        raise BareWeights(
            f"checkpoint '{file}' holds bare weights (a state dict, no facetrain config), not a facetrain "
            f"checkpoint: for insightface's backbone.pth, import it first: facetrain import --insightface {file} "
            "--arch ARCH (r18, r50, r100, mbf, ...) --out model.pt",
            state,
        )
    require_keys(state, REQUIRED_KEYS, file, "a facetrain checkpoint")
    if not isinstance(state["format_version"], int) or not isinstance(state["config"], dict):
        raise CheckpointError(f"checkpoint '{file}' has a malformed header: it is not a facetrain checkpoint")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{file}' has format {state['format_version']}, newer than this facetrain "
            f"({__version__}) reads: upgrade facetrain"
        )
    return state


class BareWeights(CheckpointError):
    """A file of bare weights where a facetrain checkpoint belongs; ``state`` is what was read, so a caller
    that knows the architectures (``facetrain.models.read_checkpoint``) can name them without reading again."""

    def __init__(self, message: str, state: dict[str, Any]) -> None:
        super().__init__(message)
        self.state = state


def _bare_weights(state: dict[str, Any]) -> bool:
    """A plain state dict (every value a tensor), or one wrapped as ``{"state_dict": ...}``."""
    import torch  # loaded already: the state was just read with it

    inner = state.get("state_dict") if isinstance(state.get("state_dict"), dict) else state
    return bool(inner) and "format_version" not in state and all(torch.is_tensor(v) for v in inner.values())


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


def require_head(state: dict[str, Any], file: str | Path, purpose: str, fix: str) -> None:
    """Refuses, in one line, a checkpoint without a margin head (an imported embedder) where one is needed.

    ``purpose`` completes "so it cannot be ..."; ``fix`` says what to do instead.
    """
    missing = [key for key in HEAD_KEYS if key not in state]
    if not missing:
        return
    origin = state.get("origin")
    if isinstance(origin, dict):
        source = f"imported from {origin.get('kind')} weights '{origin.get('file')}'"
    else:
        source = f"it lacks {', '.join(missing)}"
    raise CheckpointError(f"checkpoint '{file}' holds an embedder only ({source}), so it cannot be {purpose}: {fix}")


def resume_fix(file: str | Path) -> str:
    """What to do with an embedder-only checkpoint given to ``--resume``."""
    return f"to train from it, start a new run with model.init_from: {file}"


def check_resume_fields(state: dict[str, Any], file: str | Path) -> None:
    """Checks the types of the fields that resuming reads, the way the config's keys are checked."""
    require_head(state, file, "resumed", resume_fix(file))
    require_keys(state, RESUME_KEYS, file, "a training checkpoint to resume")
    problems = [f"{key} {why}" for key, why in _resume_field_problems(state)]
    if problems:
        raise CheckpointError(
            f"checkpoint '{file}' is damaged: {'; '.join(problems)}: it was not written by facetrain train "
            "or was edited since; resume from another checkpoint, or start a new run without --resume"
        )


def _resume_field_problems(state: dict[str, Any]) -> list[tuple[str, str]]:
    import torch

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    rules: list[tuple[str, bool, str]] = [
        ("epoch", count(state["epoch"]), "must be a whole number >= 0"),
        ("batch_in_epoch", count(state["batch_in_epoch"]), "must be a whole number >= 0"),
        ("step", count(state["step"]), "must be a whole number >= 0"),
        ("class_names", isinstance(state["class_names"], list)
         and all(isinstance(name, str) for name in state["class_names"]), "must be a list of names"),
        ("optimizer", isinstance(state["optimizer"], dict)
         and {"state", "param_groups"} <= set(state["optimizer"]), "must be an optimizer state"),
        ("scheduler", isinstance(state["scheduler"], dict) and count(state["scheduler"].get("step_count")),
         "must hold a step_count >= 0"),
        ("scaler", isinstance(state["scaler"], dict), "must be a mapping"),
        ("rng", isinstance(state["rng"], dict) and isinstance(state["rng"].get("python"), (list, tuple))
         and isinstance(state["rng"].get("torch"), torch.Tensor) and state["rng"]["torch"].dtype == torch.uint8,
         "must hold the python and torch random states"),
        ("world_size", "world_size" not in state or (count(state["world_size"]) and state["world_size"] > 0),
         "must be a whole number >= 1"),
        ("samples_in_epoch", "samples_in_epoch" not in state or count(state["samples_in_epoch"]),
         "must be a whole number >= 0"),
        ("best_value", state.get("best_value") is None
         or (isinstance(state["best_value"], (int, float)) and not isinstance(state["best_value"], bool)
             and math.isfinite(state["best_value"])),
         "must be a finite number or null"),
    ]  # fmt: skip
    return [(key, f"{why}, got {brief(state.get(key))}") for key, ok, why in rules if not ok]


def check_resumable(file: str | Path, saved: dict[str, Any], current: dict[str, Any], mid_epoch: bool) -> list[str]:
    """Raises on changes that resuming cannot honour; returns readable lines for the harmless ones."""
    changes = config_differences(_with_defaults(saved), current)
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


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the keys added since it was written at their defaults (what that run did)."""
    from facetrain.config import config_from_dict, config_to_dict

    try:
        return config_to_dict(config_from_dict(saved))
    except FacetrainError:  # not valid today: compare it as it is, and let resuming say what is wrong
        return saved


def identity_changes(saved: list[str], current: list[str] | tuple[str, ...]) -> str:
    """Which identities differ between a checkpoint and the data, in a few words."""
    old, new = set(saved), set(current)
    gone, added = [n for n in saved if n not in new], [n for n in current if n not in old]
    parts = []
    if added:
        parts.append(f"{_names(added)} not in the checkpoint")
    if gone:
        parts.append(f"{_names(gone)} missing from the data")
    return ", ".join(parts) or "the same names, in another order"


def _names(names: list[str]) -> str:
    shown = ", ".join(brief(name) for name in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _yaml(value: Any) -> str:
    """A config value as YAML writes it (null, true, 0.5, resnet50)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
