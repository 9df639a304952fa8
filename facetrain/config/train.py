"""The ``train`` section: optimiser, schedule, precision, device, checkpoints and logging."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from facetrain.config.limits import MAX_BATCH, MAX_STEPS
from facetrain.errors import ConfigError, brief
from facetrain.schema import option

_DEVICE = re.compile(r"auto|(cpu|cuda)(:[0-9]{1,4})?")


def check_device(name: str, key: str = "train.device") -> str:
    """``name`` if it names a device facetrain runs on (auto, cpu, cuda, cuda:N); else a ConfigError naming ``key``.

    Only the spelling: whether CUDA is there is ``runtime.resolve_device``'s to say.
    """
    if not _DEVICE.fullmatch(name):
        raise ConfigError(f"{key}: unknown device {brief(name)}: use auto, cpu, cuda or cuda:N")
    return name


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(20, "Passes over the training set.", ge=1, le=100_000)
    batch_size: int = option(
        128, "Images per forward pass on each rank (global batch: x ranks x grad_accum_steps).", ge=2, le=MAX_BATCH
    )
    grad_accum_steps: int = option(1, "Micro-batches per optimizer step.", ge=1, le=4096)
    optimizer: Literal["sgd", "adamw"] = option("sgd", "Optimizer.")
    lr: float = option(0.1, "Peak learning rate (reached after warm-up).", gt=0.0)
    momentum: float = option(0.9, "SGD momentum.", ge=0.0, lt=1.0)
    weight_decay: float = option(5e-4, "Weight decay; never applied to BatchNorm parameters or biases.", ge=0.0)
    schedule: Literal["cosine", "poly"] = option("cosine", "Decay after warm-up, stepped every iteration.")
    poly_power: float = option(2.0, "Exponent of the polynomial decay.", gt=0.0)
    warmup_epochs: float = option(1.0, "Linear warm-up length in epochs (may be fractional).", ge=0.0)
    min_lr: float = option(0.0, "Learning rate at the end of the decay.", ge=0.0)
    embedder_lr_scale: float = option(
        1.0,
        "The embedder's learning rate is train.lr times this (the head's is train.lr), through warm-up and "
        "decay alike; below 1 when fine-tuning from model.init_from, so a new head does not wreck a trained "
        "embedder.",
        gt=0.0,
        le=1000.0,
    )
    freeze_embedder_epochs: int = option(
        0,
        "Train the head alone for this many epochs first: the embedder gets no updates and stays in eval mode "
        "(its BatchNorm statistics frozen too), then trains with the head. For fine-tuning from model.init_from.",
        ge=0,
        le=100_000,
    )
    grad_clip: float | None = option(5.0, "Max global gradient norm; null disables clipping.", gt=0.0)
    amp: Literal["auto", "bf16", "fp16", "off"] = option(
        "auto", "Mixed precision on CUDA (auto = bf16 where supported, else fp16). Always off on CPU."
    )
    device: str = option("auto", "auto (CUDA if available), cpu, cuda or cuda:N.")
    channels_last: bool | Literal["auto"] = option(
        "auto",
        "NHWC memory layout for the embedder and its input (auto: on for CUDA and CPU, both measured faster); "
        "faster convolutions, same model.",
    )
    compile: bool = option(
        False,
        "torch.compile the embedder for training and evaluation (CUDA; first steps slower while it compiles). "
        "A compiler failure falls back to eager with one warning; checkpoints and export are unchanged.",
    )
    checkpoint_every_steps: int = option(
        500, "Also write last.pt every N optimizer steps (0 = only at epoch ends).", ge=0, le=MAX_STEPS
    )
    log_every_steps: int = option(
        10, "TensorBoard scalars (and the head's angle statistics) every N optimizer steps.", ge=1, le=MAX_STEPS
    )
    on_collapse: Literal["warn", "stop"] = option(
        "warn",
        "When a margin head collapses after its warm-up (class centres all one way, or accuracy at chance at "
        "the collapsed loss): warn once and go on, or stop with exit code 2, keeping the last checkpoint.",
    )
    dist_timeout: int = option(
        600, "Multi-process runs: seconds a rank waits for the others before it gives up.", ge=10, le=86_400
    )
