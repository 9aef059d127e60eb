"""Methods by name. A method file registers its class with ``@register_method``; importing
``ffl.methods`` imports every module of the package, so a new method is one new file."""

from __future__ import annotations

from typing import Any

METHODS: dict[str, type] = {}


def register_method(cls):
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type:
    """The registered class of ``name`` (``METHODS[name]`` with a message naming the known ones)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(spec: dict[str, Any]):
    """Rebuilds a method from the ``spec()`` saved with it."""
    spec = dict(spec)
    cls = method_class(spec.pop("method"))
    if "settings" not in spec:  # saved before each method owned a settings section
        spec["settings"] = cls.settings_from_flat_spec(spec)
    return cls(**spec)
