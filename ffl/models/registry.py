"""Backbones by name: ``resnet<6n+2>`` (CIFAR), ``wrn<6n+4>_<k>`` (CIFAR), torchvision's ImageNet ResNets."""

from __future__ import annotations

import re
from functools import partial

from ffl.models.backbone import BackboneSpec
from ffl.models.cifar_resnet import cifar_resnet
from ffl.models.imagenet_resnet import imagenet_resnet
from ffl.models.wide_resnet import wide_resnet

# torchvision's names win over the 6n+2 pattern (resnet50 is both): ImageNet users expect them.
_IMAGENET = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
_CIFAR_RESNET = re.compile(r"resnet(\d+)")
_WRN = re.compile(r"wrn(\d+)_(\d+)")


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a backbone name, or ValueError saying which names exist."""
    if name in _IMAGENET:
        out = _IMAGENET[name]
        return BackboneSpec(name, "imagenet_resnet", out // 2, out, 32, 224, partial(imagenet_resnet, name))
    if m := _CIFAR_RESNET.fullmatch(name):
        depth = int(m[1])
        if depth >= 8 and (depth - 2) % 6 == 0:
            return BackboneSpec(name, "cifar_resnet", 32, 64, 4, 32, partial(cifar_resnet, depth))
    if m := _WRN.fullmatch(name):
        depth, width = int(m[1]), int(m[2])
        if depth >= 10 and (depth - 4) % 6 == 0 and width >= 1:
            return BackboneSpec(name, "wide_resnet", 32 * width, 64 * width, 4, 32, partial(wide_resnet, depth, width))
    raise ValueError(
        f"unknown architecture {name!r}: expected resnet<6n+2> (resnet20, resnet32, resnet56, resnet110), "
        f"wrn<6n+4>_<k> (wrn16_2, wrn40_2) or one of {', '.join(_IMAGENET)}"
    )


def build_backbone(name: str):
    return backbone_spec(name).build()
