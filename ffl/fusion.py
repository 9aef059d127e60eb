"""The FFL fusion module: concatenated feature maps -> depth-wise kxk -> point-wise 1x1 -> classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ffl.models.backbone import init_weights
from ffl.models.subnetworks import Classifier


class FusionModule(nn.Module):
    """Fuses N >= 2 feature maps of equal spatial size and any channel counts into one classifier."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, width: int | None = None, kernel_size: int = 3):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"fusion needs at least 2 feature maps, got {len(in_channels)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"fusion kernel_size must be odd and >= 1, got {kernel_size}")
        total = sum(in_channels)
        # The authors' width: the channel count of one sub-network's map.
        width = width or in_channels[0]
        self.in_channels = list(in_channels)
        self.width = width
        self.depthwise = nn.Sequential(
            nn.Conv2d(total, total, kernel_size, padding=kernel_size // 2, groups=total, bias=False),
            nn.BatchNorm2d(total),
            nn.ReLU(inplace=True),
        )
        self.pointwise = nn.Sequential(
            nn.Conv2d(total, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.classifier = Classifier(width, num_classes)
        init_weights(self)

    def fuse(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fused feature map (before pooling): usable as a feature for other tasks."""
        sizes = {tuple(f.shape[-2:]) for f in feature_maps}
        if len(sizes) > 1:
            raise ValueError(f"cannot fuse feature maps of different spatial sizes: {sorted(sizes)}")
        return self.pointwise(self.depthwise(torch.cat(list(feature_maps), dim=1)))

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.fuse(feature_maps))
