"""Writes the config-key reference table into docs/config.md (between the marker comments).

The site build writes the same table again (scripts/docs_hooks.py), so the site never drifts; this
script keeps the Markdown file, as read on its own, in step (`make lint` runs it with --check).

Usage: python scripts/config_reference.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

from facetrain.config import describe_keys

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def table() -> str:
    """One table per section of the config, each under its own heading (the site's table of contents)."""
    groups: dict[str, list[str]] = {}
    for key, kind, default, help_text in describe_keys():
        section = key.split(".")[0] if "." in key else ""
        shown = f"`{default}`" if default else '`""` (required)'
        groups.setdefault(section, []).append(f"| `{key}` | {kind} | {shown} | {help_text} |")
    parts = []
    for section, rows in groups.items():
        heading = f"## `{section}`" if section else "## Top level"
        parts.append("\n".join([heading, "", "| key | type | default | meaning |", "|---|---|---|---|", *rows]))
    return "\n\n".join(parts)


def render(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    text = PAGE.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"docs/config.md lacks the markers {START} ... {END}", file=sys.stderr)
        return 2
    wanted = render(text)
    if "--check" in sys.argv:
        if wanted != text:
            print("docs/config.md config reference is out of date: run python scripts/config_reference.py")
            return 1
        return 0
    PAGE.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
