"""Device, mixed precision and random-state helpers: the one AMP code path."""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from facetrain.config import check_device
from facetrain.errors import ConfigError, brief

log = logging.getLogger("facetrain")


@dataclass(frozen=True)
class Precision:
    """Resolved mixed-precision settings for one device."""

    dtype: torch.dtype | None  # None: full float32

    @property
    def name(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        return self.dtype is torch.float16


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without CUDA is an error naming ``key``."""
    check_device(name, key)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {brief(name)}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {brief(name)} asked for, but CUDA is not available here: use cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}: {brief(name)} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def resolve_precision(amp: str, device: torch.device) -> Precision:
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            log.info("train.amp=%s applies to CUDA only; training in float32 on %s", amp, device)
        return Precision(None)
    if amp == "fp16":
        return Precision(torch.float16)
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16)
    return Precision(torch.float16)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The single autocast entry point: a real autocast on CUDA, a no-op otherwise."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """Random states as tensors and primitives (loadable with weights_only=True)."""
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value


def use_channels_last(setting: bool | str, device: torch.device) -> bool:
    """``train.channels_last``: ``auto`` is on for CUDA (tensor-core convolutions want NHWC) and on CPU, where
    oneDNN's NHWC convolutions made a resnet18 epoch at 112 px about 1.15x faster (scripts/bench_epoch.py)."""
    return device.type in ("cuda", "cpu") if setting == "auto" else bool(setting)


# torch's own notices while it compiles for a CPU ("No CUDA runtime is found, using CUDA_HOME=..."): facetrain's
# one warning (``warn_compile_on_cpu``) says what matters.
_COMPILE_NOISE = ("torch.utils.cpp_extension",)


def warn_compile_on_cpu() -> None:
    """``train.compile`` on a CPU: one warning that it targets GPUs, and torch's compiler notices kept quiet."""
    log.warning(
        "train.compile: torch.compile targets GPUs; on a CPU the first steps spend minutes compiling "
        "and the run is rarely faster: set train.compile: false there"
    )
    for name in _COMPILE_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)


class CompiledOrEager(torch.nn.Module):
    """``torch.compile`` of a module that falls back to the module itself, with one warning, when compiling fails.

    The wrapped module stays the one to save and export (its state_dict keys are unchanged); the compiled
    callable is kept out of the module tree so ``parameters()`` and ``state_dict()`` see each weight once.
    """

    def __init__(self, module: torch.nn.Module, what: str, partner: CompiledOrEager | None = None) -> None:
        super().__init__()
        self.module = module
        self.what = what
        self.__dict__["compiled"] = torch.compile(module)
        self.failed = False
        self.__dict__["partner"] = partner  # another compile of the same module: they fail together, warned once
        if partner is not None:
            partner.__dict__["partner"] = self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.partner is not None and self.partner.failed:
            self.failed = True
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # any compiler failure: the eager module computes the same
                self.failed = True
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                log.warning(
                    "train.compile: torch.compile failed for the %s (%s: %s); it runs eagerly instead, with the same "
                    "results: set train.compile: false to skip the attempt", self.what, type(exc).__name__, reason,
                )  # fmt: skip
        return self.module(*args, **kwargs)
