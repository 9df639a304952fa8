"""Typed, validated configuration, one module per section (data, model, head, train, eval).

A YAML file (plus ``--set a.b=value`` overrides) is merged into a plain dict, then checked against
the sections' frozen dataclasses. Every problem is collected and reported at once with its dotted
key, so a typo such as ``model.embeding_dim`` is never silently ignored.

A leaf of the package: no torch, and of facetrain only ``errors``, the generic ``schema`` and ``safe_yaml``.
"""

from facetrain.config.data import DataConfig
from facetrain.config.evaluation import BEST_METRICS, EvalConfig, PairsSetConfig
from facetrain.config.head import (
    HEAD_OPTION_NAMES,
    HEAD_OPTIONS,
    HEAD_SETTINGS,
    HEAD_TYPES,
    MARGIN_WARMUP_EPOCHS,
    HeadConfig,
    head_options,
    margin_warmup,
)
from facetrain.config.model import (
    BACKBONE_NAMES,
    FACE_BACKBONES,
    INSIGHTFACE_NAMES,
    ModelConfig,
    model_problems,
    resolve_arch,
)
from facetrain.config.root import (
    Config,
    all_keys,
    check_overrides,
    config_from_dict,
    config_to_dict,
    describe_keys,
    dump_config,
    load_config,
    resolve_config,
)
from facetrain.config.train import TrainConfig, check_device

__all__ = [
    "BACKBONE_NAMES",
    "BEST_METRICS",
    "FACE_BACKBONES",
    "HEAD_OPTIONS",
    "HEAD_OPTION_NAMES",
    "HEAD_SETTINGS",
    "HEAD_TYPES",
    "INSIGHTFACE_NAMES",
    "MARGIN_WARMUP_EPOCHS",
    "Config",
    "DataConfig",
    "EvalConfig",
    "HeadConfig",
    "ModelConfig",
    "PairsSetConfig",
    "TrainConfig",
    "all_keys",
    "check_device",
    "check_overrides",
    "config_from_dict",
    "config_to_dict",
    "describe_keys",
    "dump_config",
    "head_options",
    "load_config",
    "margin_warmup",
    "model_problems",
    "resolve_arch",
    "resolve_config",
]
