"""What every backbone exposes so that sub-networks can be built from it.

A backbone is split where FFL and ONE split it: ``low`` holds the low-level layers that branches
may share, ``high`` the high-level layers every sub-network owns, ending in the last feature map.
The classifier (pool + linear) is not part of the backbone: methods attach their own heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


class Backbone(nn.Module):
    """``low`` -> ``high`` -> last feature map of ``out_channels`` channels."""

    def __init__(self, low: nn.Module, high: nn.Module, low_channels: int, out_channels: int):
        super().__init__()
        self.low = low
        self.high = high
        self.low_channels = low_channels
        self.out_channels = out_channels

    def forward(self, x):
        return self.high(self.low(x))


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone by name, with the shape facts a config can be checked against before building."""

    name: str
    family: str
    low_channels: int
    out_channels: int
    stride: int  # input size / last feature map size
    input_size: int  # the image size the backbone is designed for
    build: Callable[[], Backbone]


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs, BN weight 1 / bias 0: the init of the authors' code."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
