"""The README's tour and its two commands are real: every command it shows exists, with every option
it shows, and every repository file it names is there. Each command is asked for its ``--help`` in a
fresh process, as a reader would run it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's text from the ``## title`` heading to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def shown_commands(text: str) -> list[list[str]]:
    """Each command line of the ```bash blocks, and each ``$ facetrain`` line of the output blocks, split."""
    lines = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # a command continued with a backslash is one line
            line = line.split("  #")[0].strip()
            if language == "bash" and line:
                lines.append(line)
            elif line.startswith("$ facetrain "):
                lines.append(line[2:])
    return [shlex.split(line) for line in lines]


TOUR = [words for words in shown_commands(section("A ten-minute tour")) if words[0] == "facetrain"]


@cache
def help_text(command: str) -> str:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    done = subprocess.run(
        [sys.executable, "-m", "facetrain", command, "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, f"facetrain {command} --help exited {done.returncode}: {done.stderr}"
    return done.stdout


def test_the_tour_shows_every_step() -> None:
    steps = [words[1] for words in TOUR]
    for step in ("align", "check", "train", "eval", "export", "verify"):
        assert step in steps, f"the README's tour lost its facetrain {step} step"


@pytest.mark.parametrize("words", TOUR, ids=[" ".join(words[:2]) + f" #{i}" for i, words in enumerate(TOUR)])
def test_each_tour_command_has_the_options_it_shows(words: list[str]) -> None:
    shown = help_text(words[1])
    options = {word.split("=")[0] for word in words[2:] if word.startswith("--")}
    missing = sorted(option for option in options if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", shown))
    assert not missing, f"README: `{' '.join(words)}`: facetrain {words[1]} has no option {missing}"
    for word in words[2:]:
        if word.startswith(("configs/", "facetrain/")):
            assert (REPO / word).exists(), f"README: `{' '.join(words)}` names {word}, which is not in the repository"


def test_the_two_commands_are_make_targets() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    for words in shown_commands(README):
        if words[0] == "make":
            assert words[1] in targets, f"README shows `make {words[1]}`, which the Makefile lacks"


def test_a_missing_option_would_be_caught() -> None:
    """The check above can fail: an option no command has is reported missing."""
    shown = help_text("verify")
    assert re.search(r"(?<![\w-])--align(?![\w-])", shown)
    assert not re.search(r"(?<![\w-])--align-everything(?![\w-])", shown)
    assert not re.search(r"(?<![\w-])--thresh(?![\w-])", shown)  # a prefix of --threshold is not the option
