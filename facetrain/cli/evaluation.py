"""``facetrain eval`` and ``facetrain pairs``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facetrain.cli.boundary import error_boundary
from facetrain.cli.eval_runs import EvalRequest, IjbOptions, ModelInput, run_ijb_command, run_pairs_command
from facetrain.cli.options import (
    ChannelsOption,
    InputSizeOption,
    LayoutOption,
    MeanOption,
    ModelFileOption,
    StdOption,
)
from facetrain.errors import ConfigError


@error_boundary
def eval_command(
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="A last.pt or best.pt from facetrain train.")
    ] = None,
    model: ModelFileOption = None,
    pairs: Annotated[
        list[Path] | None,
        typer.Option("--pairs", help="Pairs file: LFW pairs.txt, a `path1 path2 label` list or a .bin (repeatable)."),
    ] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Image root the --pairs files refer to (default: their folder).")
    ] = None,
    pairs_format: Annotated[str, typer.Option("--format", help="auto, lfw, list or bin.")] = "auto",
    suite: Annotated[
        Path | None, typer.Option("--suite", help="Folder of insightface .bin sets (lfw, cfp_fp, agedb_30, ...).")
    ] = None,
    ijb: Annotated[
        Path | None, typer.Option("--ijb", help="IJB-B/IJB-C folder as released: meta/ and loose_crop/.")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="With --ijb: IJBC (default) or IJBB.")] = None,
    protocol: Annotated[
        str | None, typer.Option("--protocol", help="With --ijb: 11 (1:1 verification, default) or 1n (1:N).")
    ] = None,
    norm: Annotated[
        bool | None,
        typer.Option("--norm/--no-norm", help="With --ijb: keep each image feature's norm as a weight (default)."),
    ] = None,
    detector_score: Annotated[
        bool | None,
        typer.Option(
            "--detector-score/--no-detector-score", help="With --ijb: weight images by detector score (default)."
        ),
    ] = None,
    features: Annotated[
        Path | None, typer.Option("--features", help="With --ijb: score these N x D image features (.npy).")
    ] = None,
    save_features: Annotated[
        Path | None,
        typer.Option(
            "--save-features", help="With --ijb: write the image features here (.npy; an existing file is replaced)."
        ),
    ] = None,
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
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            max=256,
            help="Loader processes (default: data.num_workers; 0 for a --model without --config).",
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write every number, per fold too, here (an existing file is replaced)."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write the ROC and score histograms as PNG (an existing file is replaced)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    channels: ChannelsOption = None,
    layout: LayoutOption = None,
) -> None:
    """Verification accuracy (k-fold), ROC AUC, EER and TAR@FAR on pairs lists; the .bin suite in one
    table (--suite); IJB-B/IJB-C 1:1 and 1:N (--ijb). Scores a checkpoint, an export or a foreign model.

    Example: facetrain eval --checkpoint runs/demo/best.pt --pairs facetrain/assets/orl_holdout_pairs.txt
    --images facetrain/assets/orl --plot runs/demo/eval.png
    """
    from facetrain.config import check_device

    check_device(device, "--device")
    request = EvalRequest(
        checkpoint, model, ModelInput(input_size, mean, std, channels, layout), config, list(set_ or []),
        device, batch_size, workers, json_out, plot,
    )  # fmt: skip
    if ijb is not None:
        if pairs or suite is not None:
            raise ConfigError("--ijb scores the IJB protocol alone: drop --pairs and --suite")
        pairs_only = {
            "--folds": folds,
            "--images": images,
            "--format": None if pairs_format == "auto" else pairs_format,
        }
        for option, value in pairs_only.items():
            if value is not None:
                raise ConfigError(f"{option} applies to pairs lists: drop it with --ijb")
        if flip is not None:
            raise ConfigError("--flip/--no-flip: the IJB protocol always adds the mirror's features: drop it")
        ijb_options = IjbOptions(
            ijb, target or "IJBC", protocol or "11", norm is not False, detector_score is not False, features,
            save_features,
        )  # fmt: skip
        run_ijb_command(request, ijb_options)
        return
    ijb_only = {
        "--target": target, "--protocol": protocol, "--features": features, "--save-features": save_features,
        "--norm/--no-norm": norm, "--detector-score/--no-detector-score": detector_score,
    }  # fmt: skip
    for option, value in ijb_only.items():
        if value is not None:
            raise ConfigError(f"{option} goes with --ijb ROOT")
    if suite is not None and pairs:
        raise ConfigError("give --pairs or --suite, not both")
    run_pairs_command(request, pairs or [], images, pairs_format, suite, folds, flip)


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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
) -> None:
    """Write an LFW-format pairs file (k folds of balanced same/different pairs) from an identity folder.

    Example: facetrain pairs --config configs/demo.yaml --folds 10 --pairs-per-fold 30 --out pairs.txt
    """
    from facetrain.evaluation import write_pairs_file
    from facetrain.files import refuse_existing

    if (root is None) == (config is None):
        raise ConfigError("give exactly one of --root DIR or --config FILE")
    refuse_existing(out, "--out", overwrite)  # an official pairs file cannot be drawn again
    path = write_pairs_file(out, root=root, config=config, folds=folds, pairs_per_fold=pairs_per_fold, seed=seed)
    typer.echo(f"pairs: {path} ({folds} folds x {pairs_per_fold} same + {pairs_per_fold} different)")
