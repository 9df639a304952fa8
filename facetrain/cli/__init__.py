"""Command-line entry points. Each command parses options and calls one library function.

This module is the single error boundary: a ``FacetrainError`` becomes one message on stderr
and exit code 2 (``FACETRAIN_DEBUG=1`` shows the traceback); any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from facetrain import __version__
from facetrain.errors import DataError, FacetrainError

if TYPE_CHECKING:
    import torch

app = typer.Typer(
    help="Face-recognition training: torchvision embedder + margin head (ArcFace and its family).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("facetrain")


def error_boundary(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return command(*args, **kwargs)
        except FacetrainError as exc:
            if os.environ.get("FACETRAIN_DEBUG") == "1":
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: checkpoints are replaced atomically, so the last one written is intact",
                err=True,
            )
            raise typer.Exit(130) from None

    return wrapper


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it per call)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _setup_logging() -> None:
    logger = logging.getLogger("facetrain")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set train.lr=0.01 (repeatable)."),
]


@app.command()
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
) -> None:
    """Train an embedder with a margin head (head.type) on an identity-folder dataset.

    Example: facetrain train --config configs/demo.yaml --set train.epochs=5
    """
    from facetrain.config import load_config
    from facetrain.training import train as run_training

    overrides = list(set_ or []) + ([f"train.device={device}"] if device else [])
    if config is None and resume is None:
        raise typer.BadParameter("give --config FILE, or --resume CHECKPOINT to continue a run")
    cfg = load_config(config, overrides) if config is not None else None  # else: the checkpoint's own
    if outlier_angle is not None and not report_outliers:
        raise typer.BadParameter("--outlier-angle applies to --report-outliers: add --report-outliers, or drop it")
    run_config = None
    if report_outliers:  # refused before training, not after it
        from facetrain.diagnostics import check_reportable
        from facetrain.evaluation import check_output_path

        run_config = check_reportable(cfg, resume, overrides, source=str(config or "config"))
        check_output_path(Path(run_config.run_dir) / "outliers.tsv", "--report-outliers")
    show_bar = sys.stderr.isatty() if progress is None else progress
    result = run_training(cfg, resume=resume, overrides=overrides, overwrite=overwrite, progress=show_bar)
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
        _report_outliers(result.checkpoint, out, outlier_angle, resolve_device(run_config.train.device), None)


@app.command("outliers")
@error_boundary
def outliers_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="A last.pt or best.pt of a head.type=subcenter_arcface run.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The TSV to write (default: outliers.tsv beside the checkpoint).")
    ] = None,
    angle: Annotated[
        float,
        typer.Option("--angle", min=0.0, max=180.0, help="Flag outliers over this many degrees from the dominant one."),
    ] = 75.0,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Images per batch (default: eval.batch_size).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """List likely mislabelled training images of a Sub-center ArcFace run, furthest first.

    Example: facetrain outliers --checkpoint runs/demo/last.pt --out runs/demo/outliers.tsv
    """
    from facetrain.evaluation import check_output_path
    from facetrain.runtime import resolve_device

    target = check_output_path(out or checkpoint.parent / "outliers.tsv", "--out")  # before the embedding work
    _report_outliers(checkpoint, target, angle, resolve_device(device), batch_size)


def _report_outliers(
    checkpoint: Path, out: Path, angle: float | None, device: torch.device, batch_size: int | None
) -> None:
    """Shared by ``train --report-outliers`` and ``outliers``: find, write the TSV, print the summary."""
    from facetrain.diagnostics import DEFAULT_ANGLE, find_outliers, format_summary, write_outliers_tsv

    report = find_outliers(checkpoint, device, DEFAULT_ANGLE if angle is None else angle, batch_size)
    path = write_outliers_tsv(report, out)
    typer.echo(format_summary(report))
    typer.echo(f"outliers: {path}")


@app.command("eval")
@error_boundary
def eval_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A last.pt or best.pt from facetrain train.")],
    pairs: Annotated[
        list[Path] | None,
        typer.Option("--pairs", help="Pairs file: LFW pairs.txt, a `path1 path2 label` list or a .bin (repeatable)."),
    ] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Image root the --pairs files refer to (default: their folder).")
    ] = None,
    pairs_format: Annotated[str, typer.Option("--format", help="auto, lfw, list or bin.")] = "auto",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Use this config's eval section (default: the checkpoint's).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a key of that config (or of the checkpoint's), e.g. eval.flip=false."
        ),
    ] = None,
    folds: Annotated[
        int | None, typer.Option("--folds", min=2, help="Folds for files that declare none (default 10).")
    ] = None,
    flip: Annotated[
        bool | None, typer.Option("--flip/--no-flip", help="Headline with flip fusion (default: eval.flip).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per batch.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number, per fold too, here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the ROC and score histograms as PNG.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Verification accuracy (k-fold), ROC AUC, EER and TAR@FAR of a checkpoint on pairs lists.

    Example: facetrain eval --checkpoint runs/demo/best.pt --pairs facetrain/assets/orl_holdout_pairs.txt
    --images facetrain/assets/orl --plot runs/demo/eval.png
    """
    from facetrain.config import load_config
    from facetrain.evaluation import check_output_path, format_report, run_eval, write_json, write_plots
    from facetrain.runtime import resolve_device

    cfg = load_config(config, list(set_ or [])) if config is not None else None
    for path, option in ((json_out, "--json"), (plot, "--plot")):
        if path is not None:
            check_output_path(path, option)  # before the embedding work, not after it
    reports = run_eval(
        checkpoint, list(pairs or []), images, pairs_format, cfg, overrides=[] if cfg else list(set_ or []),
        device=resolve_device(device), folds=folds, flip=flip, batch_size=batch_size,
    )  # fmt: skip
    typer.echo("\n\n".join(format_report(report) for report in reports))
    if json_out is not None:
        typer.echo(f"json: {write_json(reports, json_out, checkpoint)}")
    if plot is not None:
        for path in write_plots(reports, plot):
            typer.echo(f"plot: {path}")


@app.command("pairs")
@error_boundary
def pairs_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="The LFW-format pairs file to write.")],
    root: Annotated[Path | None, typer.Option("--root", help="Identity folder to draw pairs from.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Draw from this config's held-out identities instead.")
    ] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Folds (blocks) in the file.")] = 10,
    pairs_per_fold: Annotated[
        int, typer.Option("--pairs-per-fold", min=1, help="Same pairs, and as many different pairs, per fold.")
    ] = 300,
    seed: Annotated[int, typer.Option("--seed", help="Seed for drawing the pairs.")] = 0,
) -> None:
    """Write an LFW-format pairs file (k folds of balanced same/different pairs) from an identity folder.

    Example: facetrain pairs --config configs/demo.yaml --folds 10 --pairs-per-fold 30 --out pairs.txt
    """
    from facetrain.evaluation import write_pairs_file

    if (root is None) == (config is None):
        raise typer.BadParameter("give exactly one of --root DIR or --config FILE")
    path = write_pairs_file(out, root=root, config=config, folds=folds, pairs_per_fold=pairs_per_fold, seed=seed)
    typer.echo(f"pairs: {path} ({folds} folds x {pairs_per_fold} same + {pairs_per_fold} different)")


@app.command("export")
@error_boundary
def export_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A last.pt or best.pt from facetrain train.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model file to write.")],
    out_format: Annotated[str, typer.Option("--format", help="torchscript or onnx (needs facetrain[onnx]).")] = (
        "torchscript"
    ),
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Verification threshold to store in the metadata.")
    ] = None,
    threshold_from: Annotated[
        Path | None, typer.Option("--threshold-from", help="Take the threshold from a `facetrain eval --json` file.")
    ] = None,
    parity_images: Annotated[
        Path | None, typer.Option("--parity-images", help="Folder of real images for the parity check.")
    ] = None,
) -> None:
    """Export the embedder (never the margin head) with its preprocessing metadata, then check parity.

    Example: facetrain export --checkpoint runs/demo/best.pt --out runs/demo/model.pt
    """
    from facetrain.deploy import export_model, find_images, threshold_from_eval_json

    if threshold is not None and threshold_from is not None:
        raise typer.BadParameter("give --threshold or --threshold-from, not both")
    if threshold_from is not None:
        threshold = threshold_from_eval_json(threshold_from, checkpoint)
    samples = None
    if parity_images is not None:
        samples = find_images(parity_images)[0][:8] if parity_images.is_dir() else []
        if not samples:
            raise DataError(f"--parity-images: no images in '{parity_images}': give a folder of face images")
    result = export_model(checkpoint, out, out_format, threshold=threshold, sample_images=samples)
    meta = result.metadata
    typer.echo(
        f"exported: {result.path} ({result.format}; embedder only: {meta.backbone}, "
        f"{meta.image_size}x{meta.image_size} input, {meta.embedding_dim}-d L2-normalised output)"
    )
    if result.parity_checked:
        typer.echo(f"parity: max abs difference {result.max_abs_diff:.2e} vs the checkpoint ({result.note})")
    else:
        typer.echo(f"parity: {result.note}")


@app.command("verify")
@error_boundary
def verify_command(
    model: Annotated[Path, typer.Argument(help="A TorchScript model written by facetrain export.")],
    image1: Annotated[Path, typer.Argument(help="First face image.")],
    image2: Annotated[Path, typer.Argument(help="Second face image.")],
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Decision threshold (default: the one stored in the model).")
    ] = None,
) -> None:
    """Cosine score of two face images with an exported model, and same/different at a threshold.

    Example: facetrain verify runs/demo/model.pt facetrain/assets/orl/s1/1.pgm facetrain/assets/orl/s1/2.pgm
    """
    from facetrain.deploy import verify_pair

    result = verify_pair(model, image1, image2, threshold)
    typer.echo(f"score: {result.score:.4f}")
    if result.same is None:
        typer.echo("no threshold: pass --threshold, or export with --threshold-from EVAL_JSON")
    else:
        verdict = "same person" if result.same else "different people"
        source = {"argument": "from --threshold", "model metadata": "stored in the model"}[result.threshold_source]
        typer.echo(f"{verdict} (threshold {result.threshold:.4f}, {source})")


@app.command("embed")
@error_boundary
def embed_command(
    images: Annotated[Path, typer.Option("--images", help="Folder of images: flat, or one sub-folder per identity.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.npz, or .csv with --format csv).")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="A facetrain training checkpoint.")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="An exported TorchScript model.")] = None,
    out_format: Annotated[str, typer.Option("--format", help="npz or csv.")] = "npz",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")] = 2,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = None,
) -> None:
    """Embed every image of a folder: L2-normalised embeddings, relative paths and identity labels.

    Exit code 3 when some files could not be read (they are listed and skipped).

    Example: facetrain embed --checkpoint runs/demo/best.pt --images facetrain/assets/orl --out orl.npz
    """
    from facetrain.deploy import embed_folder
    from facetrain.runtime import resolve_device

    result = embed_folder(
        images, out, checkpoint=checkpoint, model=model, fmt=out_format, batch_size=batch_size,
        device=resolve_device(device), num_workers=workers,
        progress=sys.stderr.isatty() if progress is None else progress,
    )  # fmt: skip
    for path, reason in result.skipped:
        typer.echo(f"skipped: {path}: {reason}", err=True)
    typer.echo(f"embeddings: {result.out} ({result.count} images, {result.images_per_sec:.1f} images/s)")
    if result.skipped:
        typer.echo(f"{len(result.skipped)} unreadable files skipped", err=True)
        raise typer.Exit(3)


@app.command("check")
@error_boundary
def check_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file to check.")],
    set_: SetOption = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Show a bar while images are decoded.")
    ] = None,
) -> None:
    """Check a config before training: every model stage's shape, the dataset and the pairs lists.

    Example: facetrain check --config configs/r50.yaml --set data.root=/data/faces/train
    """
    from facetrain.config import load_config
    from facetrain.diagnostics import format_stages, run_check

    report = run_check(
        load_config(config, list(set_ or [])), progress=sys.stderr.isatty() if progress is None else progress
    )
    if report.stages:
        typer.echo(format_stages(report.stages))
    for fact in report.facts:
        typer.echo(fact)
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if report.problems:
        raise typer.Exit(2)
    typer.echo("check passed")


@app.command()
def version() -> None:
    """Print the facetrain version.

    Example: facetrain version
    """
    typer.echo(__version__)


def main() -> None:
    app()
