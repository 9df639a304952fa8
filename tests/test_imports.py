"""The package by stage, and imports that run one way.

    cli  →  training, deploy, diagnostics  →  evaluation  →  models  →  data
         →  config, runtime, checkpoint  →  schema, errors

A module may import its own unit (a wing such as ``facetrain.data``, or a base module such as
``facetrain.config``) and any unit of a lower rank; never a higher rank, and never a peer of the
same rank. Another wing is imported through its package (``from facetrain.data import
Preprocess``), whose ``__init__`` re-exports just what the other wings use.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facetrain"
RANK = {
    "__init__": 0,  # the package's own __init__: the version string
    "errors": 0,
    "schema": 0,
    "config": 1,
    "runtime": 1,
    "checkpoint": 1,
    "data": 2,
    "models": 3,
    "evaluation": 4,
    "training": 5,
    "deploy": 5,
    "diagnostics": 5,
    "cli": 6,
    "__main__": 7,  # python -m facetrain: runs the CLI
}
WINGS = ("data", "models", "evaluation", "training", "deploy", "diagnostics")


def module_name(path: Path) -> str:
    """``facetrain/data/folders.py`` -> ``data.folders``; ``facetrain/data/__init__.py`` -> ``data``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def unit_of(name: str) -> str:
    return name.split(".")[0]


def imported_modules(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, target) for every facetrain import, also inside functions; targets relative to facetrain.

    ``from facetrain import config`` names the module ``config``; ``from facetrain import __version__``
    names ``__init__``.
    """
    found = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name[len("facetrain.") :]) for a in node.names if a.name.startswith("facetrain.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                target = ".".join(base)
            elif node.module == "facetrain" or (node.module or "").startswith("facetrain."):
                target = node.module[len("facetrain.") :] if node.module != "facetrain" else ""
            else:
                continue
            if target:
                found.append((node.lineno, target))
            else:
                found += [(node.lineno, a.name if a.name in RANK else "__init__") for a in node.names]
    return found


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (the text of facetrain module ``module``) that breaks the layering."""
    own = unit_of(module)
    problems = []
    for line, target in imported_modules(module, source, is_package):
        unit = unit_of(target)
        where = f"facetrain.{module} line {line} imports facetrain.{target}"
        if unit not in RANK:
            problems.append(f"{where}: unknown unit '{unit}' (add it to RANK in tests/test_imports.py)")
        elif unit == own:
            continue
        elif RANK[unit] > RANK[own]:
            problems.append(f"{where}: upward ({unit} is above {own})")
        elif RANK[unit] == RANK[own]:
            problems.append(f"{where}: {unit} and {own} are peers; neither may import the other")
        elif unit in WINGS and target != unit:
            problems.append(f"{where}: import from the wing's package, facetrain.{unit}, not its module")
    return problems


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_every_import_runs_downward(path):
    module = module_name(path)
    assert unit_of(module) in RANK, f"facetrain.{module} is in no layer: add '{unit_of(module)}' to RANK"
    problems = violations(module, path.read_text(), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("data.folders", "from facetrain.training import train", "upward (training is above data)"),
        ("data.folders", "def f():\n    import facetrain.training.trainer", "upward (training is above data)"),
        ("data.folders", "from facetrain import training", "upward (training is above data)"),
        ("models.heads", "from facetrain.evaluation import load_model", "upward (evaluation is above models)"),
        ("config", "from facetrain.runtime import resolve_device", "runtime and config are peers"),
        ("deploy.export", "from facetrain.training import train", "training and deploy are peers"),
        ("training.monitor", "from facetrain.evaluation.pairs import PairList", "from the wing's package"),
        ("evaluation.pairs", "from ..training import train", "upward (training is above evaluation)"),
        ("data.folders", "import facetrain.distributed", "unknown unit 'distributed'"),
    ],
)
def test_a_wrong_import_is_caught(module, source, expected):
    problems = violations(module, source)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("training.trainer", "from facetrain.evaluation import run_eval\nfrom facetrain.data import Preprocess"),
        ("training.trainer", "from facetrain.training.optim import WarmupDecay\nfrom .monitor import Monitor"),
        ("models.heads", "from facetrain.config import HeadConfig\nfrom facetrain import __version__"),
        ("cli.training", "from facetrain.diagnostics import check_reportable"),
    ],
)
def test_a_downward_import_passes(module, source):
    assert violations(module, source) == []


@pytest.mark.parametrize("wing", WINGS)
def test_a_wing_says_what_it_is_for_and_exports_only_what_others_use(wing):
    init = PACKAGE / wing / "__init__.py"
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree) or ""
    assert doc and "\n" not in doc.strip(), f"facetrain/{wing}/__init__.py: give it a one-line docstring"
    exported = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
    )
    imported = {
        alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert set(exported) == imported, f"facetrain.{wing}: __all__ and the imports of __init__.py differ"
    used_elsewhere = set()
    for path in MODULES:
        if unit_of(module_name(path)) == wing:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == f"facetrain.{wing}":
                used_elsewhere |= {alias.name for alias in node.names}
    assert sorted(set(exported) - used_elsewhere) == [], f"facetrain.{wing} re-exports names no other unit imports"


def test_config_and_errors_load_without_torch():
    code = "import sys, facetrain.config, facetrain.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_the_cli_has_no_side_effects():
    code = "import sys, facetrain.cli; print('torch' in sys.modules, 'tensorboard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
