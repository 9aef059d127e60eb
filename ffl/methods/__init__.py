"""Methods by name; ``build_method(spec)`` rebuilds a method from the ``spec()`` saved with it."""

from __future__ import annotations

from typing import Any

from ffl.methods.base import Method
from ffl.methods.dml import DML
from ffl.methods.dualnet import DualNet
from ffl.methods.ffl import FFL
from ffl.methods.one import ONE
from ffl.methods.vanilla import Vanilla

METHODS: dict[str, type[Method]] = {m.name: m for m in (FFL, DML, ONE, DualNet, Vanilla)}


def build_method(spec: dict[str, Any]) -> Method:
    spec = dict(spec)
    name = spec.pop("method")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(METHODS)}")
    return METHODS[name](**spec)


__all__ = ["DML", "FFL", "METHODS", "ONE", "DualNet", "Method", "Vanilla", "build_method"]
