"""Numeric precision by name: ``auto`` is bf16 autocast where the device has it, fp32 elsewhere."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # On CPUs without native bf16 units (AVX512-BF16, AMX) bf16 is emulated and slower than fp32.
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # the op is private: absent in some builds
        return False


def autocast(device: torch.device, precision: str, cache: bool = True):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)
