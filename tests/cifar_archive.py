"""Tiny CIFAR archives in both official forms: python pickles (torchvision's layout) and binary records."""

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


def write_cifar_binary(root: Path, name: str, per_file: int = 20, seed: int = 0):
    """CIFAR's binary version (records of label byte(s) + 3,072 pixel bytes), as the official
    archives hold it. Returns the ``ffl.data.cifar.BinaryForm`` whose digests and sizes are those
    of the files written, and the (train, test) images and labels written, in file order."""
    import dataclasses

    from ffl.data.cifar import BINARY

    form = BINARY[name]
    rng = np.random.default_rng(seed)
    folder = root / form.folder
    folder.mkdir(parents=True, exist_ok=True)
    classes = 10 if name == "cifar10" else 100
    written = {}

    def batch(filename, algo):
        images = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        labels = (np.arange(per_file) * 7 + len(written)) % classes
        head = [labels] if form.label_bytes == 1 else [labels // 5, labels]  # CIFAR-100: coarse, fine
        records = np.concatenate([np.stack(head, 1).astype(np.uint8), images.reshape(per_file, -1)], 1)
        (folder / filename).write_bytes(records.tobytes())
        written[filename] = (images, labels)
        return (filename, algo, hashlib.new(algo, records.tobytes()).hexdigest())

    train = tuple(batch(f, algo) for f, algo, _ in form.train)
    test = tuple(batch(f, algo) for f, algo, _ in form.test)
    (folder / form.labels_file).write_text("".join(f"class{i}\n" for i in range(classes)) + "\n")
    trusted = dataclasses.replace(
        form, train=train, test=test, images_per_file={f: per_file for f in form.images_per_file}
    )

    def joined(files):
        return np.concatenate([written[f][0] for f, *_ in files]), np.concatenate([written[f][1] for f, *_ in files])

    return trusted, joined(train), joined(test)


def trust_binary_archive(monkeypatch, name: str, form) -> None:
    """Points the binary version's expected digests and sizes at the archive the test wrote."""
    from ffl.data import cifar

    monkeypatch.setitem(cifar.BINARY, name, form)
