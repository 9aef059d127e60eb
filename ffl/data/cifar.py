"""CIFAR-10/100 through torchvision's datasets, which verify every file's md5 when they load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from ffl.data.arrays import ArrayDataset, Split, channel_stats, stratified_split

DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}
# The statistics the authors' code normalises CIFAR-100 with; CIFAR-10 and the embedded dataset
# use their own training sets' statistics.
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)


class DatasetNotFound(FileNotFoundError):
    pass


def expected_files(name: str) -> list[str]:
    cls = DATASETS[name]
    return [f"{cls.base_folder}/{f}" for f, _ in cls.train_list + cls.test_list] + [
        f"{cls.base_folder}/{cls.meta['filename']}"
    ]


def _open(name: str, root: Path, train: bool, download: bool):
    cls = DATASETS[name]
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise DatasetNotFound(
                f"{name} not found or corrupted under {root}: expected {', '.join(expected_files(name))} "
                f"with torchvision's md5 checksums (set data.download: true to fetch it)"
            ) from None
    try:
        return cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types: urllib, ssl, socket, checksum
        raise DatasetNotFound(
            f"{name} could not be downloaded to {root} ({type(e).__name__}: {e}); place the extracted "
            f"files there: {', '.join(expected_files(name))}"
        ) from None


def load_cifar(name: str, root: str | Path, val_fraction: float, seed: int, download: bool = False) -> ArrayDataset:
    """CIFAR as uint8 arrays, with a stratified validation split held out from the training set."""
    if name not in DATASETS:
        raise ValueError(f"unknown CIFAR dataset {name!r}: expected one of {', '.join(DATASETS)}")
    root = Path(root)
    train, test = _open(name, root, True, download), _open(name, root, False, download)

    def arrays(ds):
        return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)

    train_x, train_y = arrays(train)
    test_x, test_y = arrays(test)
    keep, held = stratified_split(train_y, val_fraction, seed)
    splits = {
        "train": Split(train_x[keep], train_y[keep]),
        "val": Split(train_x[held], train_y[held]),
        "test": Split(test_x, test_y),
    }
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if name == "cifar100" else channel_stats(train_x)
    return ArrayDataset(name, list(train.classes), mean, std, splits)
