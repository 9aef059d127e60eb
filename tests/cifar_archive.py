"""Writes tiny CIFAR archives in the real on-disk format (python pickles, torchvision's layout)."""

import hashlib
import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar(root: Path, name: str, per_file: int = 20, seed: int = 0) -> tuple[list, list, dict]:
    """Returns (train_list, test_list, meta) with the md5 sums of the files written, in torchvision's shape."""
    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    rng = np.random.default_rng(seed)
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    classes = 10 if name == "cifar10" else 100
    key = "labels" if name == "cifar10" else "fine_labels"

    def batch(filename):
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = [int(i % classes) for i in range(per_file)]
        with open(folder / filename, "wb") as f:
            pickle.dump({"data": data, key: labels, "filenames": [b"x"] * per_file}, f)
        return [filename, md5(folder / filename)]

    train_list = [batch(f) for f, _ in cls.train_list]
    test_list = [batch(f) for f, _ in cls.test_list]
    meta_key = cls.meta["key"]
    names = [f"class{i}" for i in range(classes)]
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({meta_key: names}, f)
    meta = dict(cls.meta, md5=md5(folder / cls.meta["filename"]))
    return train_list, test_list, meta


def trust_written_archive(monkeypatch, name: str, lists) -> None:
    """Points torchvision's expected md5 sums at the archive the test wrote; the check itself stays."""
    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    train_list, test_list, meta = lists
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", meta)
