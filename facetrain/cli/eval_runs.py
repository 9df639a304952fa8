"""What ``facetrain eval`` runs once its options are parsed: pairs lists or the ``.bin`` suite, or IJB.

Each run checks every path, option and protocol file with modules that need no torch, then loads
the model (a checkpoint, an export or a foreign file), then scores and prints.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from facetrain.errors import ConfigError, DataError


@dataclass(frozen=True)
class ModelInput:
    """A foreign model's input convention, as given on the command line (None: not given)."""

    input_size: int | None = None
    mean: str | None = None
    std: str | None = None
    channels: str | None = None
    layout: str | None = None

    def given(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class EvalRequest:
    checkpoint: Path | None
    model: Path | None
    model_input: ModelInput
    config: Path | None
    overrides: list[str]
    device: str
    batch_size: int | None
    workers: int | None
    json_out: Path | None
    plot: Path | None

    @property
    def source(self) -> Path | None:
        return self.model if self.model is not None else self.checkpoint


@dataclass(frozen=True)
class IjbOptions:
    root: Path
    target: str
    protocol: str
    norm: bool
    detector_score: bool
    features: Path | None
    save_features: Path | None


def check_request(request: EvalRequest, needs_model: bool = True, inputs: tuple[Path | None, ...] = ()) -> Any:
    """The config (or None) once the model source, its options and the outputs are known good; no torch."""
    from facetrain.checkpoint import require_checkpoint
    from facetrain.config import check_overrides, load_config
    from facetrain.files import output_path

    if request.checkpoint is not None and request.model is not None:
        raise ConfigError("give --checkpoint or --model, not both")
    if needs_model and request.source is None:
        raise ConfigError("give the model to score: --checkpoint RUN/best.pt or --model FILE")
    if request.model_input.given() and request.model is None:
        first = next(iter(request.model_input.given())).replace("_", "-")
        raise ConfigError(f"--{first} describes a --model file's input: drop it, or give --model")
    cfg = load_config(request.config, request.overrides) if request.config is not None else None
    if cfg is None and request.overrides:
        if request.checkpoint is None:
            raise ConfigError("--set changes a config: give --config too (a --model has none)")
        check_overrides(request.overrides)  # the keys now; the checkpoint's config, once it is read
    if request.checkpoint is not None:
        require_checkpoint(request.checkpoint)
    if request.model is not None:
        from facetrain.deploy import check_model_input

        check_model_input(request.model, **request.model_input.given())
    for path, option, writes in ((request.json_out, "--json", "a JSON report"), (request.plot, "--plot", "a plot")):
        if path is not None:  # before the embedding, not after
            output_path(path, option, inputs=(request.source, *inputs), writes=writes)
    return cfg


def load_setup(request: EvalRequest, cfg: Any) -> Any:
    """The EvalSetup: the model loaded (imports torch) with its eval settings."""
    from facetrain.evaluation import eval_setup
    from facetrain.runtime import resolve_device

    device = resolve_device(request.device, "--device")
    model = None
    if request.model is not None:
        from facetrain.deploy import load_scorable

        model = load_scorable(request.model, device, **request.model_input.given())
    overrides = [] if cfg else request.overrides
    return eval_setup(request.checkpoint, cfg, device=device, overrides=overrides, model=model)


def run_pairs_command(
    request: EvalRequest,
    pairs: list[Path],
    images: Path | None,
    pairs_format: str,
    suite: Path | None,
    folds: int | None,
    flip: bool | None,
) -> None:
    from facetrain.evaluation import read_pairs_files

    cfg = check_request(request, inputs=tuple(pairs))
    if suite is not None:
        from facetrain.evaluation import read_suite

        pair_lists = read_suite(suite)
    else:
        pair_lists = read_pairs_files(pairs, images, pairs_format)  # before torch and the model
    if not pair_lists and request.model is not None and (cfg is None or not cfg.eval.sets):
        raise ConfigError("nothing to evaluate: pass --pairs FILE (and --images ROOT), --suite DIR or --ijb ROOT")
    from facetrain.evaluation import format_report, format_suite, run_eval, write_json, write_plots

    setup = load_setup(request, cfg)
    reports = run_eval(
        None, pair_lists, device=setup.model.device, folds=folds, flip=flip, batch_size=request.batch_size,
        setup=setup, num_workers=request.workers,
    )  # fmt: skip
    typer.echo("\n\n".join(format_report(report) for report in reports))
    summary = None
    if suite is not None or len(reports) > 1:
        from facetrain.evaluation import suite_to_dict

        typer.echo("\n" + format_suite(reports))
        summary = suite_to_dict(reports)
    if request.json_out is not None:
        typer.echo(f"json: {write_json(reports, request.json_out, request.source, summary)}")
    if request.plot is not None:
        for path in write_plots(reports, request.plot):
            typer.echo(f"plot: {path}")


def run_ijb_command(request: EvalRequest, options: IjbOptions) -> None:
    from facetrain.evaluation import FEATURES_FIX, read_protocol
    from facetrain.files import output_path, require_file

    if options.features is not None and request.source is not None:
        raise ConfigError("--features gives the image features: drop --checkpoint/--model, or --features")
    if options.features is not None and (request.batch_size is not None or request.workers is not None):
        raise ConfigError("--batch-size and --workers size the embedding, which --features skips: drop them")
    if options.features is not None and options.save_features is not None:
        raise ConfigError("--save-features writes what --features already holds: drop one")
    if request.plot is not None and options.protocol == "1n":
        raise ConfigError("--plot draws the 1:1 ROC: drop it with --protocol 1n")
    cfg = check_request(request, needs_model=options.features is None, inputs=(options.features,))
    if options.features is not None:
        require_file(options.features, DataError, "--features", FEATURES_FIX)
    if options.save_features is not None:
        output_path(options.save_features, "--save-features", inputs=(request.source,), writes="a features array")
    outputs = [path.resolve() for path in (request.json_out, request.plot, options.save_features) if path]
    if len(set(outputs)) < len(outputs):
        raise ConfigError("--json, --plot and --save-features name the same file: give each its own")
    protocol = read_protocol(options.root, options.target, options.protocol, need_images=options.features is None)
    from facetrain.evaluation import PoolMode, format_ijb, run_ijb, write_ijb_json, write_ijb_plot

    setup = load_setup(request, cfg) if options.features is None else None
    settings_batch = setup.settings.batch_size if setup is not None else 64
    report = run_ijb(
        protocol, model=setup.model if setup is not None else None, features_file=options.features,
        save_to=options.save_features, mode=PoolMode(options.norm, options.detector_score),
        batch_size=request.batch_size or settings_batch,
        num_workers=request.workers if request.workers is not None else (setup.num_workers if setup else 0),
        progress=sys.stderr.isatty(),
    )  # fmt: skip
    typer.echo(format_ijb(report))
    if options.save_features is not None:
        typer.echo(f"features: {options.save_features}")
    source = str(options.features if options.features is not None else request.source)
    if request.json_out is not None:
        typer.echo(f"json: {write_ijb_json(report, request.json_out, source)}")
    if request.plot is not None:
        typer.echo(f"plot: {write_ijb_plot(report, request.plot)}")  # type: ignore[arg-type]
