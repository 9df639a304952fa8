"""Safe, strict and bounded YAML for configs: no object tags, no duplicate keys, no alias bombs.

A SafeLoader subclass, so as safe as ``yaml.safe_load``. Only true/false are booleans (YAML 1.1 would
turn ``amp: off`` into False), a duplicate key is an error, and anchors and aliases that would expand
beyond ``MAX_YAML_VALUES`` values are refused before anything is built.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from facetrain.errors import ConfigError, brief
from facetrain.files import require_file

# A config has about 60 values; aliases that expand beyond this are refused before they are built.
MAX_YAML_VALUES = 100_000
MAX_YAML_BYTES = 10_000_000


def read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"config '{path}' is a directory: pass a YAML file to --config, e.g. configs/demo.yaml")
    require_file(path, ConfigError, "config file", "pass an existing YAML file to --config")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"config file '{path}' is over {MAX_YAML_BYTES // 1_000_000} MB: not a facetrain config")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML ({problem}): fix the syntax there") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"cannot read config file '{path}': line {line}: byte 0x{exc.object[exc.start]:02x} is not UTF-8: "
            "re-save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads only true/false as booleans.

    YAML 1.1 turns ``on/off/yes/no`` into booleans, which would make ``amp: off`` the boolean
    False; here they stay strings.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {brief(key)} (line {mark.line + 1}): keep only one", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """Safe YAML (no tags that build objects), strict about duplicates and booleans, and bounded.

    As safe as ``yaml.safe_load`` (a SafeLoader subclass). Anchors and aliases are refused when they
    would expand to more than ``MAX_YAML_VALUES`` values (an alias bomb), before anything is built.
    """
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply for a config file") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """Counts the values ``root`` expands to, each shared (aliased) node once per use, without expanding it."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            visiting.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise _too_big(node, f"anchors and aliases expand to more than {MAX_YAML_VALUES:,} values")
        elif id(node) in visiting:
            raise _too_big(node, "an alias refers to the value that contains it, so it expands forever")
        elif id(node) not in sizes:
            visiting.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _too_big(node: yaml.Node, what: str) -> yaml.YAMLError:
    return yaml.constructor.ConstructorError(None, None, f"{what}, far more than a config needs", node.start_mark)
