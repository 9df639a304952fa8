"""Wing packages whose names are imported when first used (PEP 562), not when the package is.

A wing's ``__init__`` maps each re-exported name to the module that defines it::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"folders": ("scan_identities",)})

``from facetrain.data import scan_identities`` then imports ``facetrain.data.folders`` alone, not
the whole wing: a command that fails on its input answers before torch is ever imported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, names_by_module: dict[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """(``__getattr__``, ``__dir__``, ``__all__``) for ``package``, re-exporting ``names_by_module``.

    Keys are modules relative to ``package`` (``"align"``, ``"align.geometry"``); each name is looked
    up there on first use, then kept as an attribute of the package.
    """
    home = {name: f"{package}.{module}" for module, names in names_by_module.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home[name]), name)
        setattr(sys.modules[package], name, value)  # the next lookup is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__, sorted(home)
