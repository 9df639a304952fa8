"""The run folder: never mix two runs in it, clear the old run on --overwrite, sweep stale temp files."""

from __future__ import annotations

import logging
from pathlib import Path

from facetrain.errors import ConfigError
from facetrain.files import remove_stale_temps

log = logging.getLogger("facetrain")

# What `facetrain train` writes into run_dir (and `--report-outliers` beside it).
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "outliers.tsv")
TENSORBOARD = "tensorboard"
_EVENTS_PREFIX = "events.out.tfevents."
_SHOWN = 5


def check_run_dir(run_dir: Path, overwrite: bool, resume: Path | None) -> None:
    """Refuses a file as run_dir, and a run_dir that holds another run (unless --overwrite or resuming it)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir: '{run_dir}' is a file, not a folder: set run_dir to a folder path")
    last = run_dir / "last.pt"
    if overwrite or not (last.exists() or last.is_symlink()) or continues(run_dir, resume):
        return
    raise ConfigError(
        f"run_dir: '{run_dir}' already holds last.pt from another run: pass --resume "
        f"{last} to continue it, --overwrite to replace it, or set run_dir"
    )


def continues(run_dir: Path, resume: Path | None) -> bool:
    """Whether ``resume`` is this run_dir's own last.pt (so the same run goes on there)."""
    return resume is not None and resume.resolve() == (run_dir / "last.pt").resolve()


def clear_previous_run(run_dir: Path) -> None:
    """--overwrite: removes everything an earlier `facetrain train` wrote here; names what else is left.

    Called only once the new run's config, data and model are known to be good, so a refused run
    destroys nothing.
    """
    if not run_dir.is_dir():
        return
    removed = [name for name in RUN_FILES if _unlink(run_dir / name)]
    events = run_dir / TENSORBOARD
    if events.is_dir():
        found = [file for file in events.iterdir() if file.name.startswith(_EVENTS_PREFIX) and file.is_file()]
        for file in found:
            file.unlink()
        if found:
            removed.append(f"{TENSORBOARD}/ ({len(found)} event files)")
        if not any(events.iterdir()):
            events.rmdir()
    if removed:
        log.info("--overwrite: removed the previous run's %s", ", ".join(removed))
    others = sorted(entry.name for entry in run_dir.iterdir() if entry.name not in (*RUN_FILES, TENSORBOARD))
    if others:
        shown = ", ".join(others[:_SHOWN]) + (f" and {len(others) - _SHOWN} more" if len(others) > _SHOWN else "")
        log.warning("--overwrite: '%s' also holds %s, not written by this run (left as they are)", run_dir, shown)


def check_moved(resume: Path, run_dir: str, overrides: list[str]) -> None:
    """A checkpoint resumed from a folder that is not its saved run_dir (moved, copied, another cwd)."""
    if any(text.partition("=")[0].strip() == "run_dir" for text in overrides):
        return
    here, saved = resume.resolve().parent, Path(run_dir).resolve()
    if here != saved:
        relative = "" if Path(run_dir).is_absolute() else f" (from here, '{saved}')"
        raise ConfigError(
            f"checkpoint '{resume}' was saved with run_dir '{run_dir}'{relative}, not its own folder "
            f"'{here}': add --set run_dir={resume.parent} to continue there, or --set run_dir={run_dir}"
        )


def sweep_stale_temps(run_dir: Path) -> None:
    """Removes temp files that a killed write (kill -9, power loss) left beside the run's files."""
    count = size = 0
    for name in RUN_FILES:
        found, bytes_ = remove_stale_temps(run_dir / name)
        count, size = count + found, size + bytes_
    if count:
        log.info("run_dir: removed %d temporary file(s) (%.1f MB) left by an interrupted write", count, size / 1e6)


def _unlink(path: Path) -> bool:
    if path.is_file() or path.is_symlink():
        path.unlink()
        return True
    return False
