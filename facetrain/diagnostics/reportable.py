"""Whether a run can have an outlier report, decided from its config before any model or torch."""

from __future__ import annotations

import copy
from pathlib import Path

from facetrain.checkpoint import load_checkpoint, require_head, resume_fix
from facetrain.config import Config, resolve_config
from facetrain.errors import ConfigError

SUBCENTER_HEAD = "subcenter_arcface"


def require_subcenter_head(config: Config, where: str) -> None:
    """Refuses a config whose head has no sub-centres to report on."""
    if config.head.type != SUBCENTER_HEAD:
        raise ConfigError(
            f"{where}: head.type is '{config.head.type}', but the outlier report reads the sub-centres of "
            f"head.type={SUBCENTER_HEAD}: train with --set head.type={SUBCENTER_HEAD} (head.k sub-centres, default 3)"
        )


def check_reportable(
    config: Config | None, resume: str | Path | None, overrides: list[str], source: str = "config"
) -> Config:
    """Before training: the run's config, refused unless its head is ``subcenter_arcface``.

    Without ``config``, it is the one saved in ``resume`` plus ``overrides``, as training resolves it.
    ``source`` names the config in the message (its file).
    """
    if config is not None:
        require_subcenter_head(config, source)
        return config
    if resume is None:
        raise ConfigError("give a config, or a checkpoint to resume")
    state = load_checkpoint(resume)
    require_head(state, resume, "resumed", resume_fix(resume))
    raw = copy.deepcopy(state["config"])
    config = resolve_config(raw, overrides, source=f"config inside '{resume}'")
    require_subcenter_head(config, f"checkpoint '{resume}'")
    return config
