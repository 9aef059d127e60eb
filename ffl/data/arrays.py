"""The prepared form of a small image dataset: uint8 NCHW arrays, loaded in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ffl.data.dataset import LabelledSplit, PreparedDataset


@dataclass
class Split(LabelledSplit):
    images: np.ndarray  # (N, 3, H, W) uint8
    labels: np.ndarray  # (N,) int64

    items: ClassVar[str] = "images"

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {self.images.shape}")
        self.check_lengths()


@dataclass
class ArrayDataset(PreparedDataset):
    splits: dict[str, Split]

    form: ClassVar[str] = "arrays"
    split: ClassVar[type[Split]] = Split


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 NCHW images (float64 accumulators)."""
    x = images.astype(np.float64) / 255.0
    return tuple(float(v) for v in x.mean(axis=(0, 2, 3))), tuple(float(v) for v in x.std(axis=(0, 2, 3)))
