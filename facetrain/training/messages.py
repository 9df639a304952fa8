"""What the trainer says: the model line, the multi-process set-up, each epoch, a backend's failure."""

from __future__ import annotations

import logging
import re

from facetrain.config import Config, head_options, margin_warmup
from facetrain.models import adacos_scale

log = logging.getLogger("facetrain")


def log_parallel(cfg: Config, world: int, num_classes: int, classes_per_rank: int) -> None:
    train = cfg.train
    log.info(
        "%d processes x train.batch_size %d x grad_accum_steps %d = global batch %d per optimizer step "
        "(train.lr is for this global batch: multiply it by k when the global batch grows k-fold)",
        world, train.batch_size, train.grad_accum_steps, world * train.batch_size * train.grad_accum_steps,
    )  # fmt: skip
    rate = cfg.head.sample_rate
    log.info(
        "classifier: %d classes cut into %d slices of about %d; %s",
        num_classes, world, classes_per_rank,
        f"Partial FC samples {rate:g} of each slice per step" if rate < 1 else "every class scored each step",
    )  # fmt: skip


def first_sentence(exc: BaseException) -> str:
    """The first sentence of a backend's message, without its source-file prefix."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(exc).__name__
    return text.split(". ")[0][:200]


def describe_head(cfg: Config, num_classes: int) -> str:
    options = head_options(cfg.head)
    if options.get("s") == "auto":
        options["s"] = f"auto={adacos_scale(num_classes):.3g}"
    if options:  # a margin head
        if cfg.head.warm_start_epochs:
            options["warm_start_epochs"] = f"{cfg.head.warm_start_epochs:g}"
        if margin_warmup(cfg.head):
            options["margin_warmup_epochs"] = f"{margin_warmup(cfg.head):g}"
    text = ", ".join(f"{name}={value}" for name, value in options.items())
    return f"{cfg.head.type} ({text})" if text else cfg.head.type


def format_epoch(stats: dict[str, float]) -> str:
    parts = [
        f"loss {stats['loss']:.3f}",
        f"train acc {stats['accuracy']:.3f}",
        *([f"theta_y {stats['theta_y']:.1f} deg"] if "theta_y" in stats else []),
        f"lr {stats['lr']:.2e}",
        f"{rate(stats['images_per_sec'])} img/s",
    ]
    if "verification" in stats:
        parts.append(f"verification acc {stats['verification']:.4f}")
    return ", ".join(parts)


def rate(value: float) -> str:
    """Images per second as people read them: whole above 10, else to two significant digits (never "0")."""
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}" if value > 0 else "0"
