"""The run folder: never mix two runs in it, clear the old run on --overwrite, sweep stale temp files."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from facetrain.errors import ConfigError
from facetrain.files import atomic_write, remove_stale_temps

log = logging.getLogger("facetrain")

# What `facetrain train` writes into run_dir (and `--report-outliers` beside it).
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "outliers.tsv")
TENSORBOARD = "tensorboard"
PREVIOUS = ".previous"  # where --overwrite sets the old run aside until the new one has a checkpoint
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


def clear_previous_run(run_dir: Path, keep: Path | None = None) -> None:
    """--overwrite: sets aside everything an earlier `facetrain train` wrote here; names what else is left.

    The old files move to ``run_dir/.previous/`` and are deleted once this run writes its first
    last.pt (``forget_previous_run``), so nothing of the old run can be taken for the new one, yet a
    new run that dies before its first checkpoint has destroyed nothing. Called only once the new
    run's config, data and model are known to be good. ``keep`` (the checkpoint resumed from, say
    ``best.pt``) stays where it is.
    """
    if not run_dir.is_dir():
        return
    aside = run_dir / PREVIOUS
    kept = keep.resolve() if keep is not None else None
    moved = []
    for name in RUN_FILES:
        path = run_dir / name
        if (path.is_file() or path.is_symlink()) and path.resolve() != kept:
            aside.mkdir(exist_ok=True)
            path.replace(aside / name)
            moved.append(name)
    events = run_dir / TENSORBOARD
    found = [f for f in events.iterdir() if f.name.startswith(_EVENTS_PREFIX)] if events.is_dir() else []
    for file in found:
        (aside / TENSORBOARD).mkdir(parents=True, exist_ok=True)
        file.replace(aside / TENSORBOARD / file.name)
    if found:
        moved.append(f"{TENSORBOARD}/ ({len(found)} event file{'' if len(found) == 1 else 's'})")
    if moved:
        log.info(
            "--overwrite: set the previous run's %s aside in %s (deleted when this run writes its first last.pt)",
            ", ".join(moved), aside,
        )  # fmt: skip
    ours = (*RUN_FILES, TENSORBOARD, PREVIOUS)
    others = sorted(entry.name for entry in run_dir.iterdir() if entry.name not in ours)
    if others:
        shown = ", ".join(others[:_SHOWN]) + (f" and {len(others) - _SHOWN} more" if len(others) > _SHOWN else "")
        log.warning("--overwrite: '%s' also holds %s, not written by this run (left as they are)", run_dir, shown)


def forget_previous_run(run_dir: Path) -> None:
    """Deletes the files --overwrite set aside, now that this run has a checkpoint of its own."""
    shutil.rmtree(run_dir / PREVIOUS, ignore_errors=True)


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


def same_file_as(source: Path, target: Path, option: str, intact: str = "") -> None:
    """Makes ``target`` the same bytes as ``source`` without writing them again: a hard link (a copy where
    the file system has none), put in place atomically. ``source`` is only ever replaced by a rename, so
    the next write of it leaves ``target`` as it is."""
    with atomic_write(target, option, intact) as temp:
        temp.unlink()
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
