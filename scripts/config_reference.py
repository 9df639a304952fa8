"""Writes the config-key reference table into README.md (between the marker comments).

Usage: python scripts/config_reference.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

from facetrain.config import describe_keys

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def table() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, help_text in describe_keys():
        shown = f"`{default}`" if default else '`""` (required)'
        lines.append(f"| `{key}` | {kind} | {shown} | {help_text} |")
    return "\n".join(lines)


def render(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    text = README.read_text()
    if START not in text or END not in text:
        print(f"README.md lacks the markers {START} ... {END}", file=sys.stderr)
        return 2
    wanted = render(text)
    if "--check" in sys.argv:
        if wanted != text:
            print("README.md config reference is out of date: run python scripts/config_reference.py")
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
