"""The package by stage, and imports that run one way.

    cli  →  training, deploy, diagnostics  →  evaluation  →  models  →  data
         →  runtime, checkpoint, distributed  →  config  →  safe_yaml  →  schema, files  →  paths
         →  errors, lazy

A module may import its own unit (a wing such as ``facetrain.data``, or a base module such as
``facetrain.config``) and any unit of a lower rank; never a higher rank, and never a peer of the
same rank. Another wing is imported through its package (``from facetrain.data import
Preprocess``), whose ``__init__`` re-exports just what the other wings use, lazily: it maps each
name to its module with ``facetrain.lazy.lazy_exports``, so importing a wing imports nothing else.

Loading a trained model is the models wing's (``facetrain.models.load_model``): evaluation, deploy
and diagnostics all take it from there.
"""

from __future__ import annotations

import ast
import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facetrain"
RANK = {
    "__init__": 0,  # the package's own __init__: the version string
    "errors": 0,
    "lazy": 0,  # PEP 562 re-exports for the wings' __init__
    "paths": 1,  # what a user's path is, by its first bytes
    "schema": 2,
    "files": 2,
    "safe_yaml": 3,
    "config": 4,
    "runtime": 5,
    "checkpoint": 5,
    "distributed": 5,  # every collective; no-ops for one process
    "data": 6,
    "models": 7,
    "evaluation": 8,
    "training": 9,
    "deploy": 9,
    "diagnostics": 9,
    "cli": 10,
    "__main__": 11,  # python -m facetrain: runs the CLI
}
WINGS = ("data", "models", "evaluation", "training", "deploy", "diagnostics")


def module_name(path: Path) -> str:
    """``facetrain/data/folders.py`` -> ``data.folders``; ``facetrain/data/__init__.py`` -> ``data``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def unit_of(name: str) -> str:
    return name.split(".")[0]


@functools.cache
def wing_modules(wing: str) -> dict[str, tuple[str, ...]]:
    """``{module: names}`` that ``facetrain/<wing>/__init__.py`` hands to ``lazy_exports``."""
    tree = ast.parse((PACKAGE / wing / "__init__.py").read_text())
    for node in tree.body:
        call = node.value if isinstance(node, ast.Assign) else None
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "lazy_exports" and len(call.args) == 2:
            return ast.literal_eval(call.args[1])
    return {}


def wing_exports(wing: str) -> set[str]:
    """The names that ``facetrain.<wing>`` re-exports (its ``__all__``)."""
    return {name for names in wing_modules(wing).values() for name in names}


def _dynamic_import(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("facetrain...")`` or ``__import__("facetrain...")``."""
    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) and value.split(".")[0] == "facetrain" else None
    return None


def imported_modules(module: str, source: str, is_package: bool = False) -> list[tuple[int, str, tuple | None]]:
    """(line, target, names) for every facetrain import, also inside functions and dynamic ones.

    ``target`` is relative to facetrain ("" for the bare package). ``names`` are the names of a
    ``from facetrain.<target> import ...``; None where a module itself is imported (``import
    facetrain.x``, ``from facetrain import x``). ``from facetrain import __version__`` names ``__init__``.
    """
    found: list[tuple[int, str, tuple | None]] = []
    package = module.split(".") if is_package else module.split(".")[:-1]

    def add_module(line: int, dotted: str) -> None:  # dotted: "facetrain" or "facetrain.x.y"
        found.append((line, dotted.partition(".")[2], None))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "facetrain":
                    add_module(node.lineno, alias.name)
        elif isinstance(node, ast.Call) and (dynamic := _dynamic_import(node)):
            add_module(node.lineno, dynamic)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                target = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "facetrain":
                target = node.module.partition(".")[2]
            else:
                continue
            names = tuple(alias.name for alias in node.names)
            if target:
                found.append((node.lineno, target, names))
            else:  # from facetrain import x, __version__
                found += [(node.lineno, "__init__" if name == "__version__" else name, None) for name in names]
    return found


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (the text of facetrain module ``module``) that breaks the layering."""
    own = unit_of(module)
    problems = []
    for line, target, names in imported_modules(module, source, is_package):
        unit = unit_of(target)
        where = f"facetrain.{module} line {line} imports facetrain{'.' if target else ''}{target}"
        if not target:
            problems.append(f"{where}: the bare package; import the module or the names you use")
        elif unit not in RANK:
            problems.append(f"{where}: unknown unit '{unit}' (add it to RANK in tests/test_imports.py)")
        elif unit == own:
            continue
        elif RANK[unit] > RANK[own]:
            problems.append(f"{where}: upward ({unit} is above {own})")
        elif RANK[unit] == RANK[own]:
            problems.append(f"{where}: {unit} and {own} are peers; neither may import the other")
        elif unit in WINGS and (target != unit or names is None):
            problems.append(f"{where}: import names from the wing's package (from facetrain.{unit} import ...)")
        elif unit in WINGS and (hidden := sorted(set(names) - wing_exports(unit))):
            problems.append(f"{where}: {', '.join(hidden)} not in facetrain.{unit}.__all__ (re-export it there)")
    return problems


MODULES = sorted(PACKAGE.rglob("*.py"))


@functools.cache
def imports_of(path: Path) -> list[tuple[int, str, tuple | None]]:
    return imported_modules(module_name(path), path.read_text(), path.name == "__init__.py")


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
        # Model loading is the models wing's: asking evaluation for it is caught.
        ("deploy.export", "from facetrain.evaluation import load_model", "load_model not in facetrain.evaluation"),
        ("diagnostics.outliers", "from facetrain.evaluation import load_weights", "not in facetrain.evaluation"),
        ("config", "from facetrain.runtime import resolve_device", "upward (runtime is above config)"),
        ("runtime", "from facetrain.checkpoint import load_checkpoint", "checkpoint and runtime are peers"),
        ("deploy.export", "from facetrain.training import train", "training and deploy are peers"),
        ("training.monitor", "from facetrain.evaluation.pairs import PairList", "from the wing's package"),
        ("evaluation.pairs", "from ..training import train", "upward (training is above evaluation)"),
        ("data.folders", "import facetrain.launcher", "unknown unit 'launcher'"),
        ("data.folders", "from facetrain import launcher", "unknown unit 'launcher'"),
        ("data.folders", "import importlib\nimportlib.import_module('facetrain.training')", "upward"),
        ("data.folders", "__import__('facetrain.models.heads')", "upward (models is above data)"),
        ("data.folders", "import facetrain", "the bare package"),
        # Past the wing's re-exports: a submodule, the package object, a star, a name not in __all__.
        ("training.monitor", "from facetrain.evaluation import pairs", "pairs not in facetrain.evaluation.__all__"),
        ("training.monitor", "from ..evaluation import metrics", "metrics not in facetrain.evaluation.__all__"),
        ("models.heads", "from facetrain.data import *", "* not in facetrain.data.__all__"),
        ("models.heads", "from facetrain.data import load_image", "load_image not in facetrain.data.__all__"),
        ("training.monitor", "from facetrain import evaluation", "import names from the wing's package"),
        ("training.monitor", "import facetrain.evaluation as e", "import names from the wing's package"),
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
    exported = wing_exports(wing)
    assert exported, f"facetrain/{wing}/__init__.py: map its re-exports with lazy_exports"
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert [ast.unparse(node) for node in imports] == ["from facetrain.lazy import lazy_exports"], (
        f"facetrain/{wing}/__init__.py imports more than lazy_exports: importing the wing would load it all"
    )
    used_elsewhere = {
        name
        for path in MODULES
        if unit_of(module_name(path)) != wing
        for _, target, names in imports_of(path)
        if target == wing and names
        for name in names
    }
    assert sorted(exported - used_elsewhere) == [], f"facetrain.{wing} re-exports names no other unit imports"


@pytest.mark.parametrize("wing", WINGS)
def test_every_lazy_name_is_defined_where_its_wing_says(wing):
    package = importlib.import_module(f"facetrain.{wing}")
    modules = wing_modules(wing)
    assert package.__all__ == sorted(name for names in modules.values() for name in names)
    for module, names in modules.items():
        home = importlib.import_module(f"facetrain.{wing}.{module}")
        for name in names:
            assert getattr(package, name) is getattr(home, name), f"facetrain.{wing}.{name}"
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        _ = package.nothing_here


def test_importing_a_wing_imports_none_of_its_modules():
    code = (
        "import sys\n"
        f"for wing in {list(WINGS)!r}:\n"
        "    before = set(sys.modules)\n"
        "    __import__('facetrain.' + wing)\n"
        "    print(wing, sorted(m for m in set(sys.modules) - before if m.startswith('facetrain')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    expected = [f"{wing} {sorted({f'facetrain.{wing}'} | ({'facetrain', 'facetrain.lazy'} if i == 0 else set()))}"
                for i, wing in enumerate(WINGS)]  # fmt: skip
    assert out.splitlines() == expected


def test_model_loading_lives_with_the_models():
    assert {"load_model", "load_weights"} <= wing_exports("models")
    assert not {"load_model", "load_weights"} & wing_exports("evaluation")
    defined_at = [
        module_name(path)
        for path in MODULES
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name in ("load_model", "load_weights")
    ]
    assert defined_at == ["models.loading", "models.loading"], defined_at


def test_config_and_errors_load_without_torch():
    code = "import sys, facetrain.config, facetrain.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_the_cli_has_no_side_effects():
    code = "import sys, facetrain.cli; print('torch' in sys.modules, 'tensorboard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
