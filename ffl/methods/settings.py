"""How a method declares its settings: a frozen dataclass whose fields carry default, bounds, doc and source.

The declaration is the one place a setting lives. The library checks a value against its bounds
when a method is built; the pipeline turns the same declaration into its params schema
(`method.<name>` in params.yaml) and the methods docs table, so a default, a bound or a source is
never written twice.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal, get_args, get_origin

from ffl.errors import SettingError


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    source: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    odd: bool = False,
    default_factory: Any = dataclasses.MISSING,
):
    """A settings field. ``source`` names where the default comes from (paper section, code file)."""
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    meta = {"doc": doc, "source": source, "bounds": bounds, "odd": odd}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_settings(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def check(settings, prefix: str = "") -> None:
    """Bounds, choices and types of every field (nested sections included); SettingError names the key."""
    types = hints(type(settings))
    for f in dataclasses.fields(settings):
        key, value, tp = prefix + f.name, getattr(settings, f.name), types[f.name]
        if is_settings(tp):
            check(value, key + ".")
            continue
        allowed = get_args(tp) if get_origin(tp) is Literal else None
        if allowed is not None:
            if value not in allowed:
                raise SettingError(key, f"expected one of {', '.join(map(str, allowed))}, got {value!r}")
            continue
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise SettingError(key, f"must be a finite number, got {value}")
            b = f.metadata.get("bounds", {})
            tests = {"ge": value >= b.get("ge", -math.inf), "gt": value > b.get("gt", -math.inf)}
            tests |= {"le": value <= b.get("le", math.inf), "lt": value < b.get("lt", math.inf)}
            for name, ok in tests.items():
                if name in b and not ok:
                    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}[name]
                    raise SettingError(key, f"must be {words} {b[name]}, got {value}")
            if f.metadata.get("odd") and value % 2 == 0:
                raise SettingError(key, f"must be odd, got {value}")


def build(cls, values: Any = None, **overrides):
    """``cls`` from an instance, a (nested) mapping or keyword arguments; checked."""
    if isinstance(values, cls) and not overrides:
        check(values)
        return values
    data = dataclasses.asdict(values) if isinstance(values, cls) else dict(values or {})
    data |= overrides
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SettingError(unknown[0], f"unknown setting (known: {', '.join(sorted(names))})")
    types = hints(cls)
    kwargs = {
        k: build(types[k], v) if is_settings(types[k]) and not isinstance(v, types[k]) else v for k, v in data.items()
    }
    out = cls(**kwargs)
    check(out)
    return out


def rows(cls, prefix: str = "") -> list[dict[str, Any]]:
    """Every leaf field: dotted name, type, default, bounds, doc, source (for the docs table)."""
    out = []
    types = hints(cls)
    for f in dataclasses.fields(cls):
        tp = types[f.name]
        if is_settings(tp):
            out += rows(tp, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(
            {
                "key": prefix + f.name,
                "type": tp,
                "default": default,
                "bounds": f.metadata.get("bounds", {}),
                "odd": f.metadata.get("odd", False),
                "doc": f.metadata.get("doc", ""),
                "source": f.metadata.get("source", ""),
            }
        )
    return out
