"""torchvision's ImageNet ResNets, split after layer3 (layer4 is the per-branch part, as in ONE/FFL)."""

from __future__ import annotations

import torchvision
from torch import nn

from ffl.models.backbone import Backbone


def imagenet_resnet(name: str) -> Backbone:
    net = getattr(torchvision.models, name)(weights=None)
    low = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
    out_channels = net.fc.in_features
    return Backbone(low, net.layer4, low_channels=out_channels // 2, out_channels=out_channels)
