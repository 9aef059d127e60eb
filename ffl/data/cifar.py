"""CIFAR-10/100 in either official form, every file checked against its published checksum.

The two forms the authors publish (www.cs.toronto.edu/~kriz/cifar.html):
- the python version (``cifar-10-batches-py/``, ``cifar-100-python/``): pickled batches, the form
  torchvision downloads; read through torchvision's datasets, after the check below;
- the binary version (``cifar-10-batches-bin/``, ``cifar-100-binary/``): fixed-size records of a
  label byte (CIFAR-100: a coarse and a fine label byte) and 3,072 pixel bytes (1,024 red, green,
  blue, row-major); read here with numpy (torchvision has no reader for it).

Each file is checked before it is read, so that a missing, truncated or altered file is named:
its size where the form fixes it (binary records), then its digest. The python version's md5 sums
are torchvision's (its ``train_list``/``test_list``/``meta``); the CIFAR-10 binary files' md5 sums
are the official files' (byte-identical copies verified with them); CIFAR-100's binary files have
no published per-file sum, so theirs are the SHA-1 sums Apache MXNet's Gluon dataset checks them
with (python/mxnet/gluon/data/vision/datasets.py), whose CIFAR-10 binary sums match the official
files. The class-name text files of the binary version are not checksummed; their line counts are
checked instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from ffl.data.arrays import ArrayDataset, Split, channel_stats
from ffl.data.dataset import stratified_split

DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}
CLASSES = {"cifar10": 10, "cifar100": 100}
# The statistics the authors' code normalises CIFAR-100 with; CIFAR-10 and the embedded dataset
# use their own training sets' statistics.
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)
PIXELS = 3 * 32 * 32


class DatasetNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class BinaryForm:
    """The binary version of one CIFAR dataset: its folder, files and record layout."""

    folder: str
    train: tuple[tuple[str, str, str], ...]  # (file, hash algorithm, digest)
    test: tuple[tuple[str, str, str], ...]
    labels_file: str  # class names, one a line, in label order
    label_bytes: int  # bytes before the pixels of a record
    label_index: int  # which of them is the label used
    images_per_file: dict[str, int]

    @property
    def record(self) -> int:
        return self.label_bytes + PIXELS


# The official CIFAR-10 binary files' md5 sums; CIFAR-100's binary files: MXNet's SHA-1 sums.
BINARY = {
    "cifar10": BinaryForm(
        folder="cifar-10-batches-bin",
        train=(
            ("data_batch_1.bin", "md5", "5dd7e06a14cb22eb9f671a540d1b7c25"),
            ("data_batch_2.bin", "md5", "5ea93a67294ea407fff1d09f752e9692"),
            ("data_batch_3.bin", "md5", "942cd6a4bcdd0dd3c604fbe906cb4421"),
            ("data_batch_4.bin", "md5", "ae636b3ba5c66a11e91e8cb52e771fcb"),
            ("data_batch_5.bin", "md5", "53f37980c15c3d472c316c40844f3f0d"),
        ),
        test=(("test_batch.bin", "md5", "803d5f7f4d78ea53de84dbe85f74fb6d"),),
        labels_file="batches.meta.txt",
        label_bytes=1,
        label_index=0,
        images_per_file={f"data_batch_{i}.bin": 10_000 for i in range(1, 6)} | {"test_batch.bin": 10_000},
    ),
    "cifar100": BinaryForm(
        folder="cifar-100-binary",
        train=(("train.bin", "sha1", "e207cd2e05b73b1393c74c7f5e7bea451d63e08e"),),
        test=(("test.bin", "sha1", "8fb6623e830365ff53cf14adec797474f5478006"),),
        labels_file="fine_label_names.txt",
        label_bytes=2,  # coarse label, fine label
        label_index=1,
        images_per_file={"train.bin": 50_000, "test.bin": 10_000},
    ),
}


def python_files(name: str) -> list[tuple[str, str, str]]:
    """The python version's files with torchvision's md5 sums, relative to the dataset root."""
    cls = DATASETS[name]
    listed = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return [(f"{cls.base_folder}/{f}", "md5", digest) for f, digest in listed]


def binary_files(name: str) -> list[tuple[str, str, str]]:
    form = BINARY[name]
    return [(f"{form.folder}/{f}", algo, digest) for f, algo, digest in (*form.train, *form.test)]


def expected_files(name: str) -> list[str]:
    return [f for f, _, _ in python_files(name)]


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify(name: str, root: Path, form: str, files: list[tuple[str, str, str]]) -> None:
    """Every file present, of the size its records fix, with its published digest; else
    DatasetNotFound naming the first file that is not."""
    sizes = {}
    if form == "binary":
        b = BINARY[name]
        sizes = {f"{b.folder}/{f}": n * b.record for f, n in b.images_per_file.items()}
    where = f"{name} ({form} version) under {root}"
    for rel, algorithm, expected in files:
        path = root / rel
        if not path.is_file():
            raise DatasetNotFound(f"{where}: {rel} is missing; {remedy(name, form)}")
        size = path.stat().st_size
        if rel in sizes and size != sizes[rel]:
            state = "truncated" if size < sizes[rel] else "too long"
            raise DatasetNotFound(
                f"{where}: {rel} is {size:,} bytes, the official file {sizes[rel]:,} ({state}); {remedy(name, form)}"
            )
        actual = _digest(path, algorithm)
        if actual != expected:
            raise DatasetNotFound(
                f"{where}: {rel} has {algorithm} {actual}, the official file {expected} "
                f"(altered or truncated); {remedy(name, form)}"
            )


def remedy(name: str, form: str) -> str:
    """Where the official file comes from: the dataset's own archive of that form."""
    archive = f"{name.replace('cifar', 'cifar-')}-{form}.tar.gz"
    return f"replace it from {archive}" + (" (or set data.download: true)" if form == "python" else "")


def find_form(name: str, root: Path) -> tuple[str, Path]:
    """Which official form ``root`` holds (the folder holding the batches' folder, or that folder
    itself): ("python" | "binary", the dataset root). The python version wins where both are."""
    folders = {"python": DATASETS[name].base_folder, "binary": BINARY[name].folder}
    for form, folder in folders.items():
        if (root / folder).is_dir():
            return form, root
        if root.name == folder and root.is_dir():
            return form, root.parent
    raise DatasetNotFound(
        f"{name} not found under {root}: expected {folders['python']}/ (the python version, "
        f"{', '.join(expected_files(name))}; what torchvision downloads) or {folders['binary']}/ (the binary "
        f"version); set data.root to the folder holding either (data.download: true fetches the python version)"
    )


def _read_python(name: str, root: Path) -> tuple[Split, Split, list[str]]:
    verify(name, root, "python", python_files(name))
    cls = DATASETS[name]

    def split(train: bool) -> tuple[Split, list[str]]:
        ds = cls(str(root), train=train, download=False)
        images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        return Split(images, np.asarray(ds.targets, dtype=np.int64)), list(ds.classes)

    (train, classes), (test, _) = split(True), split(False)
    return train, test, classes


def _read_binary(name: str, root: Path) -> tuple[Split, Split, list[str]]:
    verify(name, root, "binary", binary_files(name))
    form = BINARY[name]
    folder = root / form.folder

    def split(files) -> Split:
        records = np.concatenate([np.fromfile(folder / f, dtype=np.uint8).reshape(-1, form.record) for f, *_ in files])
        images = np.ascontiguousarray(records[:, form.label_bytes :].reshape(-1, 3, 32, 32))
        return Split(images, records[:, form.label_index].astype(np.int64))

    names_file = folder / form.labels_file
    if not names_file.is_file():
        raise DatasetNotFound(f"{name} (binary version) under {root}: {form.folder}/{form.labels_file} is missing")
    try:
        text = names_file.read_text(encoding="ascii")  # the official file: ten ASCII class names
    except UnicodeDecodeError as e:
        raise DatasetNotFound(
            f"{name} (binary version) under {root}: {form.folder}/{form.labels_file} is not the official "
            f"class-name list (byte {e.start} is not ASCII); {remedy(name, 'binary')}"
        ) from None
    classes = [line.strip() for line in text.splitlines() if line.strip()]
    if len(classes) != CLASSES[name]:
        raise DatasetNotFound(
            f"{name} (binary version) under {root}: {form.folder}/{form.labels_file} names {len(classes)} "
            f"classes, expected {CLASSES[name]}"
        )
    return split(form.train), split(form.test), classes


def _download(name: str, root: Path) -> None:
    try:
        DATASETS[name](str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types: urllib, ssl, socket, checksum
        raise DatasetNotFound(
            f"{name} could not be downloaded to {root} ({type(e).__name__}: {e}); place the extracted "
            f"files there: {', '.join(expected_files(name))}"
        ) from None


def read_cifar(name: str, root: str | Path, download: bool = False) -> tuple[Split, Split, list[str], str]:
    """(train, test, class names, form) of CIFAR ``name`` under ``root``, in whichever official form
    is there, every file checked."""
    if name not in DATASETS:
        raise ValueError(f"unknown CIFAR dataset {name!r}: expected one of {', '.join(DATASETS)}")
    root = Path(root)
    try:
        form, base = find_form(name, root)
    except DatasetNotFound:
        if not download:
            raise
        _download(name, root)
        form, base = find_form(name, root)
    reader = _read_python if form == "python" else _read_binary
    train, test, classes = reader(name, base)
    return train, test, classes, form


def load_cifar(name: str, root: str | Path, val_fraction: float, seed: int, download: bool = False) -> ArrayDataset:
    """CIFAR as uint8 arrays, with a stratified validation split held out from the training set."""
    train, test, classes, _ = read_cifar(name, root, download)
    keep, held = stratified_split(train.labels, val_fraction, seed)
    splits = {
        "train": Split(train.images[keep], train.labels[keep]),
        "val": Split(train.images[held], train.labels[held]),
        "test": test,
    }
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if name == "cifar100" else channel_stats(train.images)
    return ArrayDataset(name, classes, mean, std, splits)
