"""The command line: the Typer app, its commands by wing (training, evaluation, deploy, diagnostics, data).

Each command parses options and calls one library function; ``boundary.error_boundary`` wraps each
one, so a known error is one message and exit code 2. The command modules import the library
lazily, so importing the CLI loads neither torch nor tensorboard, and each command checks its
options, paths and config with modules that need no torch before it imports the wing that does the
work: a mistake is answered in a fraction of a second (``tests/test_cli_fast.py``,
``scripts/bench_cli.py``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from facetrain import __version__
from facetrain.cli import data, deploy, diagnostics, evaluation, training

app = typer.Typer(
    help="Face-recognition training: an IResNet, MobileFaceNet or torchvision embedder and an ArcFace-family head.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Every command is wrapped by error_boundary where it is defined. Registered in the order that
# `facetrain --help` lists them.
app.command("train")(training.train)
app.command("outliers")(diagnostics.outliers_command)
app.command("eval")(evaluation.eval_command)
app.command("pairs")(evaluation.pairs_command)
app.command("export")(deploy.export_command)
app.command("import")(deploy.import_command)
app.command("verify")(deploy.verify_command)
app.command("embed")(deploy.embed_command)
app.command("check")(diagnostics.check_command)
app.command("pack")(data.pack_command)
app.command("unpack")(data.unpack_command)
app.command("align")(data.align_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the facetrain version and exit."),
    ] = False,
) -> None:
    """Options before the command: --version."""


@app.command()
def version() -> None:
    """Print the facetrain version.

    Example: facetrain version
    """
    typer.echo(__version__)


def main() -> None:
    app()
