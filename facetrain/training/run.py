"""``train``: one run from a config (or a checkpoint to resume), inside its process group."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

from facetrain import distributed
from facetrain.checkpoint import load_checkpoint, require_head, resume_fix
from facetrain.config import Config, margin_warmup, resolve_config
from facetrain.errors import ConfigError
from facetrain.runtime import resolve_device
from facetrain.training.loop import FitResult
from facetrain.training.preflight import check_fine_tune
from facetrain.training.rundir import check_moved
from facetrain.training.trainer import Trainer

log = logging.getLogger("facetrain")


def train(
    config: Config | None,
    resume: str | Path | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Trains ``config``; without one, resumes with the config saved in ``resume`` plus ``overrides``.

    The checkpoint to resume is read once, here, and handed to the trainer (memory-mapped under torchrun,
    so the ranks of a node do not each hold a copy of the whole classifier). Under torchrun the process
    group lives exactly as long as the run.
    """
    if config is not None:
        check_fine_tune(config, resume)  # init_from starts a new run; --resume continues one
    state = load_checkpoint(resume, mmap=distributed.launched()) if resume else None
    if state is not None:  # an imported embedder has no head or optimizer to continue
        require_head(state, resume, "resumed", resume_fix(resume))
    before_warm_up = state is not None and _before_the_warm_up(state)
    if config is None:
        if state is None:
            raise ConfigError("give a config, or a checkpoint to resume")
        # A copy: the saved config stays as it was, so resuming can list what the overrides changed.
        config = resolve_config(copy.deepcopy(state["config"]), overrides or [], source=f"config inside '{resume}'")
        check_moved(Path(resume), config.run_dir, overrides or [])
        if config.model.init_from != state["config"].get("model", {}).get("init_from"):
            check_fine_tune(config, resume)  # an override that names a new init_from; its own is never re-applied
    elif before_warm_up and margin_warmup(config.head):
        log.info("%s was trained without a margin warm-up (facetrain had none then): it resumes without one", resume)
        config = dataclasses.replace(config, head=dataclasses.replace(config.head, margin_warmup_epochs=0.0))
    device = distributed.device_for(resolve_device(config.train.device))
    with distributed.process_group(device, config.train.dist_timeout):
        trainer = Trainer(config, resume=resume, overwrite=overwrite, progress=progress, resume_state=state)
        try:
            trainer.setup()
            return trainer.fit()
        finally:
            trainer.release()  # even when an error's traceback keeps the trainer alive


def _before_the_warm_up(state: dict) -> bool:
    """True for a checkpoint saved before facetrain had a margin warm-up; its saved config is completed
    in place with the warm-up it trained with (none), so resuming compares like with like."""
    head = state["config"].get("head") if isinstance(state.get("config"), dict) else None
    if not isinstance(head, dict) or "margin_warmup_epochs" in head:
        return False
    head["margin_warmup_epochs"] = 0.0
    return True
