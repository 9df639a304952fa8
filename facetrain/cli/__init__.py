"""The command line: one Typer app, a module of commands per wing, and the one error boundary.

Each command parses options and calls one library function; ``boundary.error_boundary`` wraps them
all, so a known error is one message and exit code 2. The command modules import the library
lazily, so importing the CLI loads neither torch nor tensorboard.
"""

from __future__ import annotations

import typer

from facetrain import __version__
from facetrain.cli import deploy, diagnostics, evaluation, training
from facetrain.cli.boundary import error_boundary

app = typer.Typer(
    help="Face-recognition training: torchvision embedder + margin head (ArcFace and its family).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# In the order `facetrain --help` lists them.
COMMANDS = (
    ("train", training.train),
    ("outliers", diagnostics.outliers_command),
    ("eval", evaluation.eval_command),
    ("pairs", evaluation.pairs_command),
    ("export", deploy.export_command),
    ("verify", deploy.verify_command),
    ("embed", deploy.embed_command),
    ("check", diagnostics.check_command),
)
for _name, _command in COMMANDS:
    app.command(_name)(error_boundary(_command))


@app.command()
def version() -> None:
    """Print the facetrain version.

    Example: facetrain version
    """
    typer.echo(__version__)


def main() -> None:
    app()
