"""Every method of the package, registered by name on import (one file each)."""

from __future__ import annotations

import importlib
import pkgutil

from ffl.errors import SettingError
from ffl.methods.base import Method
from ffl.methods.registry import METHODS, build_method, method_class, register_method

_INFRASTRUCTURE = {"base", "registry", "settings"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")


def __getattr__(attr: str):
    # ``from ffl.methods import FFL``: classes by their Python name, without this file naming them.
    for cls in METHODS.values():
        if cls.__name__ == attr:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["METHODS", "Method", "SettingError", "build_method", "method_class", "register_method"]
