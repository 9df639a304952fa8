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

# Every command, in the order `facetrain --help` lists them, with the page of the documentation (docs/, or
# the site `make docs` builds) that its --help ends with; tests/test_cli_help.py checks each page exists.
# Each command is wrapped by error_boundary where it is defined.
COMMANDS = (
    ("train", training.train, "training.md"),
    ("outliers", diagnostics.outliers_command, "diagnostics.md"),
    ("eval", evaluation.eval_command, "evaluation.md"),
    ("pairs", evaluation.pairs_command, "evaluation.md"),
    ("export", deploy.export_command, "deployment.md"),
    ("import", deploy.import_command, "backbones.md"),
    ("verify", deploy.verify_command, "deployment.md"),
    ("embed", deploy.embed_command, "deployment.md"),
    ("check", diagnostics.check_command, "diagnostics.md"),
    ("pack", data.pack_command, "data.md"),
    ("unpack", data.unpack_command, "data.md"),
    ("align", data.align_command, "alignment.md"),
)
PAGES = {name: page for name, _, page in COMMANDS}
for _name, _command, _page in COMMANDS:
    app.command(_name, epilog=f"Documentation: docs/{_page}")(_command)


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
