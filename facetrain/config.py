"""Typed, validated configuration.

A YAML file (plus ``--set a.b=value`` overrides) is merged into a plain dict, then
checked against the dataclasses below. Every problem is collected and reported at once
with its dotted key, so a typo such as ``model.embeding_dim`` is never silently ignored.

This module is a leaf: no torch, and of facetrain only ``errors``, the generic ``schema`` and ``safe_yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from facetrain import schema
from facetrain.errors import ConfigError
from facetrain.safe_yaml import parse_yaml, read_yaml
from facetrain.schema import build, option

# The backbone registry (facetrain.models.backbones) must offer exactly these; a test checks it.
BACKBONE_NAMES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
)  # fmt: skip
MAX_SEED = 2**32 - 1
# Upper bounds of every size and count, far above real use, so that no value can ask for absurd memory.
MAX_IMAGE_SIZE = 1024  # pixels per side: face models use 112-224
MAX_CROP = 100_000  # pixels per side of a centre crop
MAX_BATCH = 65_536
MAX_COUNT = 100_000_000  # identities (WebFace42M has 2.06M), images per identity
MAX_STEPS = 1_000_000_000
MAX_BATCH_INPUT_GB = 32  # one batch of float32 input images, before any activation
MAX_PROBLEMS = 20  # listed in one config error; the rest are counted
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
# measurement on Extended Yale B (README: Training from scratch): ArcFace collapses without one; the
# other margin heads train without one and did no better with a 2-epoch one.
MARGIN_WARMUP_EPOCHS = {"arcface": 4.0}
# Metrics that can choose best.pt; each names a number of the verification report.
BEST_METRICS = ("accuracy", "roc_auc", "tar@far=1e-1", "tar@far=1e-2", "tar@far=1e-3", "tar@far=1e-4")


@dataclass(frozen=True)
class DataConfig:
    root: str = option(
        "",
        "Training folder (one sub-folder of images per identity), or an insightface or im2rec `train.rec` "
        "(its `.idx` beside it).",
    )
    val_root: str | None = option(
        None, "Separate folder (or `.rec`) of held-out identities for verification (instead of a split)."
    )
    val_identities: int = option(
        0, "Identities held out of `root` for verification (chosen with `split_seed`).", ge=0, le=MAX_COUNT
    )
    split_seed: int = option(0, "Seed that picks the held-out identities.", ge=0, le=MAX_SEED)
    min_images_per_identity: int = option(
        2, "Identities with fewer images are dropped (the count is logged).", ge=1, le=MAX_COUNT
    )
    image_size: int = option(112, "Square input size in pixels after crop and resize.", ge=16, le=MAX_IMAGE_SIZE)
    center_crop: int | float | None = option(
        None,
        "Centre crop before resizing: pixels (int, square) or a fraction of each side "
        "(float in (0, 1]); null for none.",
        gt=0,
        le=MAX_CROP,
    )
    hflip: bool = option(True, "Random horizontal flip during training.")
    num_workers: int = option(2, "DataLoader worker processes (0 loads in the main process).", ge=0, le=256)
    cache: Literal["none", "ram", "auto"] = option(
        "auto",
        "Keep the decoded, cropped and resized images in memory (uint8, one copy per machine) instead of "
        "decoding them every epoch; also the verification images scored during training. auto: when they fit "
        "within `cache_max_gb`; ram: always (refused when the machine lacks the memory); none: never.",
    )
    cache_max_gb: float | None = option(
        None,
        "Memory budget of `cache: auto` in GB (10^9 bytes), per machine; null: half the memory available "
        "when the run starts.",
        gt=0.0,
        le=1_000_000.0,
    )


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal[BACKBONE_NAMES] = option(
        "resnet50", "torchvision backbone: resnet18/34/50/101/152, vgg11/13/16/19 (with or without _bn)."
    )
    pretrained: str | None = option(
        None, "Local torchvision weights file (.pth) for the backbone; null trains from scratch."
    )
    embedding_dim: int = option(512, "Size of the face embedding.", ge=2, le=8192)
    pool_size: int = option(1, "Output side of the neck's adaptive average pool (1 = global pool).", ge=1, le=64)
    dropout: float = option(0.0, "Dropout before the projection.", ge=0.0, lt=1.0)
    sync_bn: bool = option(
        False, "Multi-process runs: BatchNorm statistics over the global batch (SyncBatchNorm), not each rank's."
    )


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
HEAD_SETTINGS = ("type", "warm_start_epochs", "margin_warmup_epochs", "num_classes", "sample_rate")
HEAD_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(HeadConfig) if f.name not in HEAD_SETTINGS)


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
    grad_clip: float | None = option(5.0, "Max global gradient norm; null disables clipping.", gt=0.0)
    amp: Literal["auto", "bf16", "fp16", "off"] = option(
        "auto", "Mixed precision on CUDA (auto = bf16 where supported, else fp16). Always off on CPU."
    )
    device: str = option("auto", "auto (CUDA if available), cpu, cuda or cuda:N.")
    channels_last: bool | Literal["auto"] = option(
        "auto",
        "NHWC memory layout for the embedder and its input (auto: on for CUDA, off on CPU); faster convolutions, "
        "same model.",
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


@dataclass(frozen=True)
class PairsSetConfig:
    pairs: str = option("", "Pairs file: LFW pairs.txt layout, a plain `path1 path2 label` list, or a .bin.")
    images: str | None = option(None, "Image root the pairs file refers to; null: the pairs file's folder.")
    format: Literal["auto", "lfw", "list", "bin"] = option("auto", "Pairs file format (auto: detected).")
    name: str | None = option(None, "Name in logs and reports; null: the file name without extension.")


@dataclass(frozen=True)
class EvalConfig:
    sets: tuple[PairsSetConfig, ...] = field(
        default=(), metadata={"help": "Verification pairs sets, evaluated during training and by `facetrain eval`."}
    )
    folds: int = option(
        10, "Folds for files that declare none (each fold keeps the same/different balance).", ge=2, le=100
    )
    flip: bool = option(True, "Flip fusion: add the embedding of the mirrored image before normalising.")
    batch_size: int = option(64, "Images per batch when embedding.", ge=1, le=MAX_BATCH)
    every_steps: int = option(
        0, "During training, also evaluate every N optimizer steps (0: epoch ends only).", ge=0, le=MAX_STEPS
    )
    best_metric: Literal[BEST_METRICS] = option(
        "accuracy", "Metric on the first set that picks best.pt (TAR@FAR where measurable)."
    )


@dataclass(frozen=True)
class Config:
    run_dir: str = option("runs/facetrain", "Folder for checkpoints, the saved config and TensorBoard logs.")
    seed: int = option(0, "Seed for weights, data order and augmentation.", ge=0, le=MAX_SEED)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- parsing


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML file, applies ``key=value`` overrides, and validates the result."""
    raw: dict[str, Any] = {} if path is None else read_yaml(Path(path))
    return resolve_config(raw, overrides, source=str(path) if path else "config")


def resolve_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> Config:
    """Applies ``key=value`` overrides to a raw dict, then validates it."""
    for text in overrides:
        _apply_override(raw, text)
    return config_from_dict(raw, source=source)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validates a nested dict; raises one ConfigError listing every problem."""
    problems: list[str] = []
    config = build(Config, raw, "", problems, root=Config)
    if not problems:
        problems.extend(_cross_checks(config))
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        shown = problems[:MAX_PROBLEMS] + (
            [f"... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else []
        )
        lines = "\n".join(f"  {p}" for p in shown)
        raise ConfigError(f"{source}: {count}:\n{lines}")
    # Null head options become the chosen head's defaults, so saved configs state every value used.
    head = dataclasses.replace(
        config.head, **head_options(config.head), margin_warmup_epochs=margin_warmup(config.head)
    )
    return dataclasses.replace(config, head=head)


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


def _head_problems(head: HeadConfig) -> list[str]:
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


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict of the resolved config (for YAML files and checkpoints)."""
    return schema.to_plain(config)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _apply_override(raw: dict[str, Any], text: str) -> None:
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. --set train.lr=0.01")
    try:
        value = parse_yaml(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            dotted = ".".join(parts[: i + 1])
            raise ConfigError(f"--set '{text}': '{dotted}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _cross_checks(config: Config) -> list[str]:
    problems = []
    data, train = config.data, config.train
    if data.val_root is not None and data.val_identities > 0:
        problems.append(
            "data.val_identities: set to 0 when data.val_root is given (held-out identities come from one place)"
        )
    if data.val_identities == 1:
        problems.append("data.val_identities: verification needs 0 or at least 2 held-out identities, got 1")
    if isinstance(data.center_crop, float) and data.center_crop > 1.0:
        problems.append(
            f"data.center_crop: a fraction must be <= 1.0, got {data.center_crop} (write a whole number for pixels)"
        )
    if train.warmup_epochs > train.epochs:
        problems.append(f"train.warmup_epochs: {train.warmup_epochs} is longer than train.epochs ({train.epochs})")
    for index, pairs_set in enumerate(config.eval.sets):
        if not pairs_set.pairs:
            problems.append(f"eval.sets[{index}].pairs: required: the path of a pairs file")
    problems.extend(_head_problems(config.head))
    for key, batch in (("train.batch_size", train.batch_size), ("eval.batch_size", config.eval.batch_size)):
        gigabytes = batch * 3 * data.image_size**2 * 4 / 2**30
        if gigabytes > MAX_BATCH_INPUT_GB:
            problems.append(
                f"{key}: {batch} images of {data.image_size}x{data.image_size} px are {gigabytes:.0f} GiB of input "
                f"alone (the limit is {MAX_BATCH_INPUT_GB} GiB): lower {key} or data.image_size"
            )
    if train.min_lr > train.lr:
        problems.append(f"train.min_lr: {train.min_lr} is above train.lr ({train.lr})")
    return problems


def all_keys() -> list[str]:
    """Every dotted leaf key of the config."""
    return schema.all_keys(Config)


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every leaf key, for the README reference."""
    return schema.describe_keys(Config)
