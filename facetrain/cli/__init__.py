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


# Every command is wrapped by error_boundary where it is defined. Registered in the order that
# `facetrain --help` lists them.
for _name, _command in (
    ("train", training.train),
    ("outliers", diagnostics.outliers_command),
    ("eval", evaluation.eval_command),
    ("pairs", evaluation.pairs_command),
    ("export", deploy.export_command),
    ("import", deploy.import_command),
    ("verify", deploy.verify_command),
    ("embed", deploy.embed_command),
    ("check", diagnostics.check_command),
    ("pack", data.pack_command),
    ("unpack", data.unpack_command),
    ("align", data.align_command),
):
    app.command(_name, epilog=f"Documentation: docs/{PAGES[_name]}")(_command)


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
