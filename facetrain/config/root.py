"""The whole config: its sections in one frozen object, read from YAML plus ``--set`` overrides and
validated at once, with the checks that span sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facetrain import schema
from facetrain.config.data import DataConfig
from facetrain.config.evaluation import EvalConfig
from facetrain.config.head import HeadConfig, head_options, head_problems, margin_warmup
from facetrain.config.limits import MAX_BATCH_INPUT_GB, MAX_PROBLEMS, MAX_SEED
from facetrain.config.model import ModelConfig, model_problems
from facetrain.config.train import TrainConfig, check_device
from facetrain.errors import ConfigError
from facetrain.safe_yaml import parse_yaml, read_yaml
from facetrain.schema import build, option


@dataclass(frozen=True)
class Config:
    run_dir: str = option("runs/facetrain", "Folder for checkpoints, the saved config and TensorBoard logs.")
    seed: int = option(0, "Seed for weights, data order and augmentation.", ge=0, le=MAX_SEED)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML file, applies ``key=value`` overrides, and validates the result."""
    raw: dict[str, Any] = {} if path is None else read_yaml(Path(path))
    return resolve_config(raw, overrides, source=str(path) if path else "config")


def resolve_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> Config:
    """Applies ``key=value`` overrides to a raw dict, then validates it."""
    for text in overrides:
        _apply_override(raw, text)
    return config_from_dict(raw, source=source)


def check_overrides(overrides: list[str] | tuple[str, ...], source: str = "--set") -> None:
    """Refuses an override that names no key, or gives a key a value of the wrong kind, before the config
    it will apply to is known (a checkpoint's, read later). Checks across keys wait for that config."""
    raw: dict[str, Any] = {}
    for text in overrides:
        _apply_override(raw, text)
    problems: list[str] = []
    build(Config, raw, "", problems, root=Config)
    if problems:
        raise ConfigError(_listed(source, problems))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validates a nested dict; raises one ConfigError listing every problem."""
    problems: list[str] = []
    config = build(Config, raw, "", problems, root=Config)
    if not problems:
        problems.extend(_cross_checks(config))
    if problems:
        raise ConfigError(_listed(source, problems))
    # Null head options become the chosen head's defaults, so saved configs state every value used.
    head = dataclasses.replace(
        config.head, **head_options(config.head), margin_warmup_epochs=margin_warmup(config.head)
    )
    return dataclasses.replace(config, head=head)


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
    problems.extend(head_problems(config.head))
    problems.extend(model_problems(config.model))
    for key, batch in (("train.batch_size", train.batch_size), ("eval.batch_size", config.eval.batch_size)):
        gigabytes = batch * 3 * data.image_size**2 * 4 / 2**30
        if gigabytes > MAX_BATCH_INPUT_GB:
            problems.append(
                f"{key}: {batch} images of {data.image_size}x{data.image_size} px are {gigabytes:.0f} GiB of input "
                f"alone (the limit is {MAX_BATCH_INPUT_GB} GiB): lower {key} or data.image_size"
            )
    try:
        check_device(train.device)
    except ConfigError as exc:
        problems.append(str(exc))
    problems.extend(_fine_tune_problems(config))
    if train.min_lr > train.lr:
        problems.append(f"train.min_lr: {train.min_lr} is above train.lr ({train.lr})")
    return problems


def _fine_tune_problems(config: Config) -> list[str]:
    problems = []
    if config.head.init == "imprint" and not config.model.init_from:
        problems.append(
            "head.init: imprint sets each class centre from the embeddings of a trained embedder, and without "
            "model.init_from the embedder is random: set model.init_from to a checkpoint, or head.init: random"
        )
    if config.train.freeze_embedder_epochs > config.train.epochs:
        problems.append(
            f"train.freeze_embedder_epochs: {config.train.freeze_embedder_epochs} is longer than train.epochs "
            f"({config.train.epochs})"
        )
    return problems


def all_keys() -> list[str]:
    """Every dotted leaf key of the config."""
    return schema.all_keys(Config)


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every leaf key, for the config reference (docs/config.md)."""
    return schema.describe_keys(Config)


def _listed(source: str, problems: list[str]) -> str:
    """One message: how many problems ``source`` has, then each (the first MAX_PROBLEMS) on its own line."""
    count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
    shown = problems[:MAX_PROBLEMS] + (
        [f"... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else []
    )
    lines = "\n".join(f"  {p}" for p in shown)
    return f"{source}: {count}:\n{lines}"
