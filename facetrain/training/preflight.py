"""What a run reads, checked before anything heavy is imported: a wrong path costs no model build.

Only the checks that need no torch and no image: the data source is there and of the right kind,
each eval set's pairs file exists, the run folder holds no other run. The trainer's own setup makes
the same checks again (with the same messages) for callers that skip this.
"""

from __future__ import annotations

import os
from pathlib import Path

from facetrain.config import Config
from facetrain.data import require_source
from facetrain.evaluation import require_pairs_file
from facetrain.training.rundir import check_run_dir


def check_inputs(config: Config, resume: Path | None = None, overwrite: bool = False) -> None:
    """Raises the first problem with a path that ``config`` names (see the module docstring)."""
    if os.environ.get("RANK", "0") == "0":  # the main rank owns run_dir, as in the trainer
        check_run_dir(Path(config.run_dir), overwrite, resume)
    require_source(config.data.root, "data.root")
    if config.data.val_root is not None:
        require_source(config.data.val_root, "data.val_root")
    for spec in config.eval.sets:
        require_pairs_file(spec.pairs)
