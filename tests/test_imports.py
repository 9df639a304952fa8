"""Layering: imports flow one way (cli -> train -> library -> config/errors)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facetrain"
LAYER = {"errors": 0, "config": 0, "schema": 0, "train": 2, "cli": 3, "__main__": 3, "__init__": 0}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def layer_of(name: str) -> int:
    """Named modules have their layer; everything else (models, data, metrics, ...) is layer 1."""
    return LAYER.get(name.removesuffix(".__init__"), 1)


def facetrain_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("facetrain"):
            found.add(node.module.removeprefix("facetrain").lstrip(".") or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("facetrain.") for a in node.names if a.name.startswith("facetrain.")}
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=module_name)
def test_no_module_imports_a_higher_layer(path):
    own = layer_of(module_name(path))
    for imported in facetrain_imports(path):
        if imported == "__init__":
            continue  # the version string
        assert layer_of(imported) <= own, f"{module_name(path)} (layer {own}) imports {imported}"


def test_config_and_errors_load_without_torch():
    code = "import sys, facetrain.config, facetrain.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_the_cli_has_no_side_effects():
    code = "import sys, facetrain.cli; print('torch' in sys.modules, 'tensorboard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
