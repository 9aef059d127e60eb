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


def _legacy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Specs saved before methods owned a settings section (flat keyword arguments): same runs."""
    if name == "ffl":
        f = {k: spec.pop(k) for k in ("fusion", "fusion_width", "fusion_kernel_size") if k in spec}
        s = {k: spec.pop(k) for k in ("temperature", "rampup_epochs", "ce_weight") if k in spec}
        for term in ("ekd", "fkd"):
            if term in spec or f"{term}_weight" in spec:
                s[term] = {"enabled": spec.pop(term, True), "weight": spec.pop(f"{term}_weight", 1.0)}
        if f:
            s["fusion"] = {"enabled": f.get("fusion", True), "width": f.get("fusion_width")}
            s["fusion"]["kernel_size"] = f.get("fusion_kernel_size", 3)
        return s
    keep = {
        "dml": ("temperature", "rampup_epochs", "ce_weight", "kd_weight"),
        "one": ("temperature", "rampup_epochs", "ce_weight", "kd_weight"),
    }
    s = {k: spec.pop(k) for k in keep.get(name, ()) if k in spec}
    if name == "dml":
        s["update"] = "joint"  # what the old DML did
    for k in ("ce_weight", "epochs", "finetune_fraction"):
        spec.pop(k, None)
    return s


def method_class(name: str) -> type:
    """The registered class of ``name`` (``METHODS[name]`` with a message naming the known ones)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(spec: dict[str, Any]):
    """Rebuilds a method from the ``spec()`` saved with it."""
    spec = dict(spec)
    cls = method_class(spec.pop("method"))
    if "settings" not in spec:
        spec["settings"] = _legacy(cls.name, spec)
    return cls(**spec)
