"""Comparing two run configs (nested dicts of plain values): the one comparison behind every
"made with other params" check (a checkpoint resumed, prepared data or a model used, a search
resumed), and the one way those checks word what differs."""

from __future__ import annotations

from typing import Any

ABSENT = "<absent>"


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty mapping stays a value."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(then: dict, now: dict, exact_types: bool = False) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value then, value now)`` for every key whose value differs, sorted by key; a
    key one side lacks has the value ABSENT there. With ``exact_types``, equal values of other
    types differ too (1 vs 1.0, True vs 1: written back as params, they would parse otherwise)."""
    a, b = flatten(then), flatten(now)
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, ABSENT), b.get(key, ABSENT)
        if x != y or (exact_types and type(x) is not type(y)):
            out.append((key, x, y))
    return out


def described(diffs: list[tuple[str, Any, Any]], shown: int = 3) -> str:
    """``key: then -> now, ...`` for the first ``shown`` differences, and how many more."""
    text = ", ".join(f"{key}: {x} -> {y}" for key, x, y in diffs[:shown])
    return text + (f" and {len(diffs) - shown} more" if len(diffs) > shown else "")
