"""``facetrain outliers`` and ``facetrain check``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from facetrain.cli.boundary import error_boundary
from facetrain.cli.options import SetOption

if TYPE_CHECKING:
    import torch


@error_boundary
def outliers_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="A last.pt or best.pt of a head.type=subcenter_arcface run.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="The TSV to write (default: outliers.tsv beside the checkpoint); an existing one is replaced.",
        ),
    ] = None,
    angle: Annotated[
        float,
        typer.Option("--angle", min=0.0, max=180.0, help="Flag outliers over this many degrees from the dominant one."),
    ] = 75.0,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, max=65_536, help="Images per batch (default: eval.batch_size).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """List likely mislabelled training images of a Sub-center ArcFace run, furthest first.

    Example: facetrain outliers --checkpoint runs/demo/last.pt --out runs/demo/outliers.tsv
    """
    from facetrain.checkpoint import require_checkpoint
    from facetrain.config import check_device
    from facetrain.files import output_path

    check_device(device, "--device")
    require_checkpoint(checkpoint)
    target = output_path(
        out or checkpoint.parent / "outliers.tsv", "--out", inputs=(checkpoint,), writes="an outlier report"
    )
    from facetrain.runtime import resolve_device

    write_outlier_report(checkpoint, target, angle, resolve_device(device, "--device"), batch_size)


def write_outlier_report(
    checkpoint: Path, out: Path, angle: float | None, device: torch.device, batch_size: int | None
) -> None:
    """Shared by ``train --report-outliers`` and ``outliers``: find, write the TSV, print the summary."""
    from facetrain.diagnostics import DEFAULT_ANGLE, find_outliers, format_summary, write_outliers_tsv

    report = find_outliers(checkpoint, device, DEFAULT_ANGLE if angle is None else angle, batch_size)
    path = write_outliers_tsv(report, out)
    typer.echo(format_summary(report))
    typer.echo(f"outliers: {path}")


@error_boundary
def check_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file to check.")],
    set_: SetOption = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Show a bar while images are decoded.")
    ] = None,
    world_size: Annotated[
        int,
        typer.Option("--world-size", min=1, max=65_536, help="Plan the classifier's memory for this many ranks."),
    ] = 1,
    num_classes: Annotated[
        int | None,
        typer.Option(
            "--num-classes", min=2, max=100_000_000, help="Plan for this many identities without reading the data."
        ),
    ] = None,
) -> None:
    """Check a config before training: every model stage's shape, the dataset, the pairs lists, and the
    classifier's memory per rank.

    Example: facetrain check --config configs/r50.yaml --set data.root=/data/faces/train --world-size 8
    """
    from facetrain.config import load_config
    from facetrain.diagnostics import ranks_problem

    cfg = load_config(config, list(set_ or []))
    if num_classes is not None and (problem := ranks_problem(world_size, num_classes)):
        typer.echo(f"problem: {problem}", err=True)  # from the options alone: answered before any model is built
        raise typer.Exit(2)
    from facetrain.diagnostics import format_plan, format_stages, run_check

    report = run_check(
        cfg,
        progress=sys.stderr.isatty() if progress is None else progress,
        world_size=world_size,
        num_classes=num_classes,
    )
    if report.stages:
        typer.echo(format_stages(report.stages))
    for fact in report.facts:
        typer.echo(fact)
    if report.plan is not None:
        typer.echo(format_plan(report.plan))
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if report.problems:
        raise typer.Exit(2)
    typer.echo("check passed")
