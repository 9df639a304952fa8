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
    epilog="Documentation: README.md, then docs/ (one page per subject; `make docs` builds them as a site).",
)

# The page of the documentation (docs/, or the site `make docs` builds) that each command's --help
# ends with; tests/test_cli_help.py checks that every command has one and that the page exists.
PAGES = {
    "train": "training.md",
    "outliers": "diagnostics.md",
    "eval": "evaluation.md",
    "pairs": "evaluation.md",
    "export": "deployment.md",
    "import": "backbones.md",
    "verify": "deployment.md",
    "embed": "deployment.md",
    "check": "diagnostics.md",
    "pack": "data.md",
    "unpack": "data.md",
    "align": "alignment.md",
}


def _register(name: str, command) -> None:
    app.command(name, epilog=f"Documentation: docs/{PAGES[name]}")(command)


# Every command is wrapped by error_boundary where it is defined. Registered in the order that
# `facetrain --help` lists them.
_register("train", training.train)
_register("outliers", diagnostics.outliers_command)
_register("eval", evaluation.eval_command)
_register("pairs", evaluation.pairs_command)
_register("export", deploy.export_command)
_register("import", deploy.import_command)
_register("verify", deploy.verify_command)
_register("embed", deploy.embed_command)
_register("check", diagnostics.check_command)
_register("pack", data.pack_command)
_register("unpack", data.unpack_command)
_register("align", data.align_command)


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


@app.command(epilog="Documentation: README.md")
def version() -> None:
    """Print the facetrain version.

    Example: facetrain version
    """
    typer.echo(__version__)


def main() -> None:
    app()
