"""``facetrain train``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from facetrain.cli.boundary import error_boundary
from facetrain.cli.diagnostics import write_outlier_report
from facetrain.cli.options import ConfigOption, SetOption
from facetrain.errors import ConfigError

if TYPE_CHECKING:
    from facetrain.config import Config


@error_boundary
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N (overrides train.device).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue from this last.pt (config optional).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start afresh even if run_dir already holds last.pt.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Show the tqdm bar (default: when stderr is a terminal)."),
    ] = None,
    report_outliers: Annotated[
        bool,
        typer.Option(
            "--report-outliers",
            help="After training, write run_dir/outliers.tsv: likely mislabelled training images "
            "(needs head.type=subcenter_arcface; checked before training).",
        ),
    ] = False,
    outlier_angle: Annotated[
        float | None,
        typer.Option(
            "--outlier-angle",
            min=0.0,
            max=180.0,
            help="With --report-outliers: flag outliers over this many degrees from the dominant one (default 75).",
        ),
    ] = None,
    nproc_per_node: Annotated[
        str | None,
        typer.Option(
            "--nproc-per-node",
            help="Train with N processes on this machine (auto: one per GPU, else 1), started by torch's elastic "
            "launcher as torchrun --standalone would. Several machines: use torchrun itself.",
        ),
    ] = None,
) -> None:
    """Train an embedder with a margin head (head.type) on an identity folder or a .rec.

    Example: facetrain train --config configs/demo.yaml --set train.epochs=5
    """
    cfg, overrides, run_config = _checked_inputs(
        config, list(set_ or []), device, resume, overwrite, report_outliers, outlier_angle
    )
    if nproc_per_node is not None:  # after the checks: a mistake is answered once, before any worker starts
        from facetrain.cli.launch import launch_if_asked

        last = Path(cfg.run_dir) / "last.pt" if cfg is not None else resume  # what a killed run resumes from
        planned = device or (cfg.train.device if cfg is not None else "auto")
        launch_if_asked(nproc_per_node, last, planned)  # exits with the workers' code when it started them
    from facetrain.training import train as run_training

    if device:
        from facetrain.runtime import resolve_device

        resolve_device(device, "--device")  # whether CUDA is there: torch's to say
    show_bar = sys.stderr.isatty() if progress is None else progress
    result = run_training(cfg, resume=resume, overrides=overrides, overwrite=overwrite, progress=show_bar)
    if os.environ.get("RANK", "0") != "0":
        return  # the main rank reports the run, and writes the outlier report
    typer.echo(f"checkpoint: {result.checkpoint} (epoch {result.epochs_done}, step {result.steps_done})")
    if result.best is not None:
        typer.echo(f"best checkpoint: {result.best}")
    if result.before is not None and result.after is not None:
        stage = "at resume" if result.resumed else "before training"
        typer.echo(f"{result.after.label}: {stage} {result.before.value:.4f} -> after {result.after.value:.4f}")
        typer.echo(f"  before: {result.before.detail}")
        typer.echo(f"  after:  {result.after.detail}")
    if run_config is not None:
        from facetrain.runtime import resolve_device

        out = result.checkpoint.parent / "outliers.tsv"
        write_outlier_report(result.checkpoint, out, outlier_angle, resolve_device(run_config.train.device), None)


def _checked_inputs(
    config: Path | None,
    set_: list[str],
    device: str | None,
    resume: Path | None,
    overwrite: bool,
    report_outliers: bool,
    outlier_angle: float | None,
) -> tuple[Config | None, list[str], Config | None]:
    """(config or None to use the checkpoint's, overrides, the config to report outliers of) once the
    options, the config and every path it names are checked, all before torch is imported."""
    from facetrain.checkpoint import require_checkpoint
    from facetrain.config import check_device, check_overrides, load_config

    if config is None and resume is None:
        raise ConfigError("give --config FILE, or --resume CHECKPOINT to continue a run")
    if outlier_angle is not None and not 0.0 <= outlier_angle <= 180.0:  # NaN passes typer's range check
        raise ConfigError(f"--outlier-angle: must be degrees in [0, 180], got {outlier_angle}")
    if outlier_angle is not None and not report_outliers:
        raise ConfigError("--outlier-angle applies to --report-outliers: add --report-outliers, or drop it")
    if device:
        check_device(device, "--device")  # named as the user typed it, not as train.device
    overrides = set_ + ([f"train.device={device}"] if device else [])
    cfg = load_config(config, overrides) if config is not None else None  # else: the checkpoint's own
    if cfg is None:
        check_overrides(overrides)  # the keys now; the checkpoint's config, once it is read
    if resume is not None:
        require_checkpoint(resume)
    if cfg is not None:
        from facetrain.training import check_inputs

        check_inputs(cfg, resume, overwrite)
    if not report_outliers:
        return cfg, overrides, None
    from facetrain.diagnostics import check_reportable
    from facetrain.files import output_path

    run_config = check_reportable(cfg, resume, overrides, source=str(config or "config"))  # refused before training
    output_path(Path(run_config.run_dir) / "outliers.tsv", "--report-outliers", writes="an outlier report")
    return cfg, overrides, run_config
