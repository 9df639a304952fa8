"""What a run reads, checked before anything heavy is imported: a wrong path costs no model build.

Only the checks that need no torch and no image: the data source is there and of the right kind,
each eval set's pairs file exists, the run folder holds no other run, model.init_from is a
torch file (and is not given with --resume). The trainer's own setup makes
the same checks again (with the same messages) for callers that skip this.
"""

from __future__ import annotations

import os
from pathlib import Path

from facetrain.checkpoint import require_checkpoint
from facetrain.config import Config
from facetrain.data import require_source
from facetrain.errors import CheckpointError, ConfigError
from facetrain.evaluation import require_pairs_file
from facetrain.training.rundir import check_run_dir


def check_inputs(config: Config, resume: Path | None = None, overwrite: bool = False) -> None:
    """Raises the first problem with a path that ``config`` names (see the module docstring)."""
    check_fine_tune(config, resume)
    if os.environ.get("RANK", "0") == "0":  # the main rank owns run_dir, as in the trainer
        check_run_dir(Path(config.run_dir), overwrite, resume)
    require_source(config.data.root, "data.root")
    if config.data.val_root is not None:
        require_source(config.data.val_root, "data.val_root")
    for spec in config.eval.sets:
        require_pairs_file(spec.pairs)
    if config.model.init_from and resume is None:
        check_init_from_place(config)
        try:
            require_checkpoint(config.model.init_from)
        except CheckpointError as exc:
            raise CheckpointError(f"model.init_from: {exc}") from None


def check_init_from_place(config: Config) -> None:
    """Refuses a ``model.init_from`` inside ``run_dir``: the new run's own last.pt and best.pt (or --overwrite,
    which clears the folder) would replace the checkpoint it starts from."""
    source, run_dir = Path(str(config.model.init_from)).resolve(), Path(config.run_dir).resolve()
    if run_dir in source.parents:
        raise ConfigError(
            f"model.init_from: '{config.model.init_from}' is inside run_dir '{config.run_dir}', where this new run "
            "writes its own last.pt and best.pt (and --overwrite clears the folder): set run_dir to another folder, "
            "or move the checkpoint out of it"
        )


def check_fine_tune(config: Config, resume: str | Path | None) -> None:
    """Refuses ``--resume`` with a config that sets ``model.init_from``: the two start a run differently."""
    if resume is not None and config.model.init_from:
        raise ConfigError(
            f"model.init_from with --resume: init_from starts a new run from another model's embedder; --resume "
            f"continues the run in '{resume}', whose checkpoint already holds its fine-tuned embedder and head: to "
            "continue a fine-tune, give --resume alone (its own config; it never re-loads init_from); to start a "
            "new fine-tune, drop --resume"
        )
