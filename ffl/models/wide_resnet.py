"""Wide ResNet WRN-d-k for CIFAR (Zagoruyko & Komodakis 2016): pre-activation blocks, widths 16k/32k/64k."""

from __future__ import annotations

from torch import nn

from ffl.models.backbone import Backbone, init_weights


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


def _group(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [WideBlock(in_planes, planes, stride)]
    layers += [WideBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def wide_resnet(depth: int, width: int) -> Backbone:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
    if width < 1:
        raise ValueError(f"WRN width must be >= 1, got {width}")
    n = (depth - 4) // 6
    w = [16, 16 * width, 32 * width, 64 * width]
    low = nn.Sequential(
        nn.Conv2d(3, w[0], 3, 1, 1, bias=False),
        _group(w[0], w[1], n, 1),
        _group(w[1], w[2], n, 2),
    )
    # The final BN-ReLU of a pre-activation net belongs to the last stage: its output is the
    # feature map that the classifier (and the fusion module) sees.
    high = nn.Sequential(_group(w[2], w[3], n, 2), nn.BatchNorm2d(w[3]), nn.ReLU(inplace=True))
    backbone = Backbone(low, high, low_channels=w[2], out_channels=w[3])
    init_weights(backbone)
    return backbone
