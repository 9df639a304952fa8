"""``facetrain eval`` and ``facetrain pairs``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facetrain.cli.boundary import error_boundary


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
        int | None, typer.Option("--folds", min=2, max=100, help="Folds for files that declare none (default 10).")
    ] = None,
    flip: Annotated[
        bool | None, typer.Option("--flip/--no-flip", help="Headline with flip fusion (default: eval.flip).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, max=65_536, help="Images per batch.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every number, per fold too, here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the ROC and score histograms as PNG.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Verification accuracy (k-fold), ROC AUC, EER and TAR@FAR of a checkpoint on pairs lists.

    Example: facetrain eval --checkpoint runs/demo/best.pt --pairs facetrain/assets/orl_holdout_pairs.txt
    --images facetrain/assets/orl --plot runs/demo/eval.png
    """
    from facetrain.checkpoint import require_checkpoint
    from facetrain.config import check_device, check_overrides, load_config
    from facetrain.evaluation import read_pairs_files
    from facetrain.files import output_path

    check_device(device, "--device")
    cfg = load_config(config, list(set_ or [])) if config is not None else None
    if cfg is None:
        check_overrides(list(set_ or []))  # the keys now; the checkpoint's config, once it is read
    require_checkpoint(checkpoint)
    for path, option in ((json_out, "--json"), (plot, "--plot")):
        if path is not None:
            output_path(path, option, inputs=(checkpoint, *(pairs or [])))  # before the embedding, not after
    pair_lists = read_pairs_files(list(pairs or []), images, pairs_format)  # before torch and the checkpoint
    from facetrain.evaluation import format_report, run_eval, write_json, write_plots
    from facetrain.runtime import resolve_device

    reports = run_eval(
        checkpoint, pair_lists, cfg, overrides=[] if cfg else list(set_ or []),
        device=resolve_device(device, "--device"), folds=folds, flip=flip, batch_size=batch_size,
    )  # fmt: skip
    typer.echo("\n\n".join(format_report(report) for report in reports))
    if json_out is not None:
        typer.echo(f"json: {write_json(reports, json_out, checkpoint)}")
    if plot is not None:
        for path in write_plots(reports, plot):
            typer.echo(f"plot: {path}")


@error_boundary
def pairs_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="The LFW-format pairs file to write.")],
    root: Annotated[Path | None, typer.Option("--root", help="Identity folder to draw pairs from.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Draw from this config's held-out identities instead.")
    ] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, max=100, help="Folds (blocks) in the file.")] = 10,
    pairs_per_fold: Annotated[
        int,
        typer.Option("--pairs-per-fold", min=1, max=100_000, help="Same pairs, and as many different pairs, per fold."),
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
