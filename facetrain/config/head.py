"""The ``head`` section: the margin head, its options and their defaults per head type."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from facetrain.config.limits import MAX_COUNT
from facetrain.schema import option

HEAD_TYPES = ("arcface", "cosface", "combined", "subcenter_arcface", "curricularface", "adaface", "softmax")
# The options each head takes, with the default a null value stands for (the paper's setting).
# Setting an option the chosen head does not take is an error, never silently ignored.
HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "arcface": {"s": 64.0, "m": 0.5, "easy_margin": False},
    "cosface": {"s": 64.0, "m": 0.35},
    "combined": {"s": 64.0, "m1": 1.0, "m2": 0.5, "m3": 0.0},
    "subcenter_arcface": {"s": 64.0, "m": 0.5, "easy_margin": False, "k": 3},
    "curricularface": {"s": 64.0, "m": 0.5, "ema_alpha": 0.01},
    "adaface": {"s": 64.0, "m": 0.4, "h": 0.333, "ema_alpha": 0.01},
    "softmax": {},
}
# Epochs over which a head's margin ramps up from 0 when head.margin_warmup_epochs is null, chosen by
# measurement on Extended Yale B (docs/training.md: Training from scratch): ArcFace collapses without one; the
# other margin heads train without one and did no better with a 2-epoch one.
MARGIN_WARMUP_EPOCHS = {"arcface": 4.0}


@dataclass(frozen=True)
class HeadConfig:
    type: Literal[HEAD_TYPES] = option(
        "arcface", "Classification head: a margin head, or softmax (plain linear, the no-margin baseline)."
    )
    s: float | Literal["auto"] | None = option(
        None,
        "Logit scale. null: 64 (every head but softmax). auto: AdaCos's fixed scale sqrt(2) * ln(C - 1) for C "
        "training identities (at least 1).",
        gt=0.0,
    )
    m: float | None = option(
        None,
        "Margin. null: 0.5 rad for arcface, subcenter_arcface and curricularface; 0.35 (cosine) for cosface; "
        "0.4 for adaface.",
        ge=0.0,
        lt=1.5707963267948966,
    )
    easy_margin: bool | None = option(
        None, "arcface, subcenter_arcface: margin only where cos(theta) > 0. null: false."
    )
    m1: float | None = option(
        None, "combined: multiplicative angular margin (SphereFace-style when not 1). null: 1.0.", gt=0.0, le=8.0
    )
    m2: float | None = option(
        None, "combined: additive angular margin in radians (ArcFace). null: 0.5.", ge=0.0, lt=1.5707963267948966
    )
    m3: float | None = option(None, "combined: additive cosine margin (CosFace). null: 0.0.", ge=0.0, le=1.0)
    k: int | None = option(None, "subcenter_arcface: sub-centres per class. null: 3.", ge=1, le=64)
    h: float | None = option(
        None, "adaface: how strongly the feature norm moves the margin. null: 0.333.", gt=0.0, le=1.0
    )
    ema_alpha: float | None = option(
        None,
        "curricularface, adaface: weight of each new batch in the running statistics "
        "(curricularface t, adaface norm mean/std). null: 0.01.",
        gt=0.0,
        le=1.0,
    )
    warm_start_epochs: float = option(
        0.0,
        "Margin heads: epochs trained with no margin first (a normalised softmax warm start), before the "
        "margin warm-up. A function of the step, so resume is exact.",
        ge=0.0,
        le=100_000,
    )
    margin_warmup_epochs: float | None = option(
        None,
        "Margin heads: the margin ramps linearly from 0 to its value over this many epochs (after "
        "warm_start_epochs); 0: the whole margin from the first step. null: 4 for arcface, which "
        "collapses from scratch without one; 0 for the other heads, which train without one.",
        ge=0.0,
        le=100_000,
    )
    init: Literal["random", "imprint"] = option(
        "random",
        "Starting class centres. random: small random vectors. imprint (needs model.init_from): each class's "
        "centre is the normalised mean of its training images' normalised embeddings under the loaded embedder "
        "(one pass before training, no flips; every sub-centre of subcenter_arcface; softmax: its weight row, "
        "bias 0) (Qi et al., Low-Shot Learning with Imprinted Weights, CVPR 2018).",
    )
    num_classes: int | None = option(
        None, "Optional check: must equal the number of training identities found.", ge=2, le=MAX_COUNT
    )
    sample_rate: float = option(
        1.0,
        "Partial FC: each step scores every class in the batch plus random others, this fraction of each "
        "rank's classes in all (1.0: every class).",
        gt=0.0,
        le=1.0,
    )


# Keys of HeadConfig that are not options of a head's margin rule.
HEAD_SETTINGS = ("type", "init", "warm_start_epochs", "margin_warmup_epochs", "num_classes", "sample_rate")
HEAD_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(HeadConfig) if f.name not in HEAD_SETTINGS)


def margin_warmup(head: HeadConfig) -> float:
    """head.margin_warmup_epochs, or the chosen head's default when it is null."""
    if head.margin_warmup_epochs is not None:
        return head.margin_warmup_epochs
    return MARGIN_WARMUP_EPOCHS.get(head.type, 0.0)


def head_options(head: HeadConfig) -> dict[str, Any]:
    """The chosen head's options, each null one replaced by its default (see HEAD_OPTIONS)."""
    return {
        name: default if getattr(head, name) is None else getattr(head, name)
        for name, default in HEAD_OPTIONS[head.type].items()
    }


def head_problems(head: HeadConfig) -> list[str]:
    problems = []
    for name in HEAD_OPTION_NAMES:
        if getattr(head, name) is None or name in HEAD_OPTIONS[head.type]:
            continue
        users = [t for t, options in HEAD_OPTIONS.items() if name in options]
        others = [t for t in HEAD_TYPES if t not in users]
        taken_by = f"by every head but {others[0]}" if len(others) == 1 else "only by " + ", ".join(users)
        problems.append(
            f"head.{name}: not an option of head.type={head.type} (it is taken {taken_by}): "
            f"remove it, or set it to null (--set head.{name}=null)"
        )
    if head.type == "softmax":  # no margin to ramp in or to hold back
        for name in ("warm_start_epochs", "margin_warmup_epochs"):
            if getattr(head, name):
                problems.append(
                    f"head.{name}: head.type=softmax has no margin to warm up: remove it, or set it to 0 "
                    f"(--set head.{name}=0)"
                )
    return problems
