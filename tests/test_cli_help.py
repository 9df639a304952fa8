"""Every command's --help ends with the page of the documentation that covers it, and that page exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from facetrain.cli import PAGES, app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = [command.name for command in app.registered_commands if command.name]


def test_every_command_has_a_page() -> None:
    assert set(COMMANDS) - {"version"} == set(PAGES)
    for page in set(PAGES.values()):
        assert (REPO / "docs" / page).is_file(), f"docs/{page} is named by a command's --help but does not exist"


@pytest.mark.parametrize("command", sorted(PAGES))
def test_help_ends_with_its_page(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    last = [line.strip() for line in result.output.splitlines() if line.strip()][-1]
    assert last == f"Documentation: docs/{PAGES[command]}"
