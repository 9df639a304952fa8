"""Generic validation of nested frozen dataclasses from plain dicts (no torch, no facetrain layers).

Each field carries its help text and range rules in its metadata (see ``option``). ``build`` walks a
raw dict against the dataclass, converts values, and appends one line per problem, keyed by the
dotted path, with "did you mean" suggestions for unknown keys and mistyped choices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

import yaml

from facetrain.errors import brief


def option(default: Any, help: str, **rules: Any) -> Any:
    """A config field with its help text and range rules (ge, gt, le, lt)."""
    return field(default=default, metadata={"help": help, **rules})


def build(cls: type, raw: Any, prefix: str, problems: list[str], root: type) -> Any:
    """An instance of dataclass ``cls`` from ``raw``, or None; each problem is appended to ``problems``.

    ``root`` is the top-level dataclass, searched for "did you mean" when a key sits in the wrong section.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {brief(raw)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            shown = key if isinstance(key, str) and len(key) <= 60 else brief(key)
            problems.append(f"{prefix}{shown}: unknown key{_suggest(prefix, str(key)[:60], list(fields), root)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        dotted = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build(hint, raw[name], dotted + ".", problems, root)
            continue
        item_class = section_list_item(hint)
        if item_class is not None:
            values[name] = _build_list(item_class, raw[name], dotted, problems, root)
            continue
        ok, value, why = _coerce(raw[name], hint)
        if not ok:
            got = "but it is empty" if raw[name] is None else f"got {brief(raw[name])}"
            problems.append(f"{dotted}: {why}, {got}{_suggest_choice(raw[name], hint)}")
            continue
        range_problem = _check_range(value, f.metadata)
        if range_problem:
            problems.append(f"{dotted}: {range_problem}, got {brief(raw[name])}")
            continue
        values[name] = value
    if any(v is None and _is_section(hints[k]) for k, v in values.items()):
        return None
    try:
        return cls(**values)
    except TypeError:  # a value was rejected above; the problem is already recorded
        return None


def section_list_item(hint: Any) -> type | None:
    """The dataclass ``X`` of a ``tuple[X, ...]`` field (a YAML list of sections), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _is_section(hint: Any) -> bool:
    return dataclasses.is_dataclass(hint) or section_list_item(hint) is not None


def _build_list(item_class: type, raw: Any, dotted: str, problems: list[str], root: type) -> tuple | None:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"{dotted}: expected a list of sections, got {brief(raw)}")
        return None
    items = [build(item_class, item, f"{dotted}[{i}].", problems, root) for i, item in enumerate(raw)]
    return None if any(item is None for item in items) else tuple(items)


def to_plain(value: Any) -> Any:
    """Dataclasses and tuples -> dicts and lists (for YAML dumps and checkpoints)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value


def _coerce(value: Any, hint: Any) -> tuple[bool, Any, str]:
    """Returns (ok, converted value, expectation text)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return True, value, ""
        listed = ", ".join(repr(c) for c in choices)
        return False, None, f"must be {listed}" if len(choices) == 1 else f"must be one of {listed}"
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            ok = type(None) in options
            return ok, None, "" if ok else "needs a value"
        reasons = []
        for option_type in options:
            if option_type is type(None):
                continue
            ok, converted, reason = _coerce(value, option_type)
            if ok:
                return True, converted, ""
            reasons.append(reason.removeprefix("must be "))
        if type(None) in options:
            reasons.append("null")
        return False, None, "must be " + " or ".join(dict.fromkeys(reasons))
    if value is None:
        return False, None, "needs a value"
    if hint is bool:
        return (True, value, "") if isinstance(value, bool) else (False, None, "must be true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value, ""
        return False, None, "must be a whole number"
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number):
            return False, None, "must be a finite number"
        return True, number, ""
    if hint is str:
        return (True, value, "") if isinstance(value, str) else (False, None, "must be a string")
    raise TypeError(f"unsupported config type {hint!r}")  # a bug in the schema, not user input


def _suggest_choice(value: Any, hint: Any) -> str:
    if typing.get_origin(hint) is not Literal or not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in typing.get_args(hint)], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_range(value: Any, rules: typing.Mapping[str, Any]) -> str | None:
    if value is None or isinstance(value, (bool, str)):
        return None
    if "ge" in rules and value < rules["ge"]:
        return f"must be >= {rules['ge']}"
    if "gt" in rules and value <= rules["gt"]:
        return f"must be > {rules['gt']}"
    if "le" in rules and value > rules["le"]:
        return f"must be <= {rules['le']}"
    if "lt" in rules and value >= rules["lt"]:
        return f"must be < {rules['lt']}"
    return None


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, f"{prefix}{f.name}."))
        elif section_list_item(hint) is not None:
            keys.extend(all_keys(section_list_item(hint), f"{prefix}{f.name}[]."))
        else:
            keys.append(prefix + f.name)
    return keys


def _suggest(prefix: str, key: str, siblings: list[str], root: type) -> str:
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    elsewhere = [k for k in all_keys(root) if k.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f" (did you mean '{elsewhere[0]}'?)"
    if siblings:
        return " (valid keys: " + ", ".join(siblings) + ")"
    return ""


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every leaf key, for the config reference (docs/config.md)."""
    rows = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe_keys(hint, f"{prefix}{f.name}."))
            continue
        if section_list_item(hint) is not None:
            rows.append((prefix + f.name, "list", "[]", f.metadata.get("help", "")))
            rows.extend(describe_keys(section_list_item(hint), f"{prefix}{f.name}[]."))
            continue
        default = getattr(defaults, f.name)
        shown = (
            "null"
            if default is None
            else ("" if default == "" else yaml.safe_dump(default).strip().removesuffix("..."))
        )
        rows.append((prefix + f.name, _type_name(hint), shown.strip(), f.metadata.get("help", "")))
    return rows


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " \\| ".join(str(c) for c in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " \\| ".join("null" if t is type(None) else _type_name(t) for t in typing.get_args(hint))
    return hint.__name__
