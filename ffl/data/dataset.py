"""What every prepared dataset is, whatever its splits hold: labelled splits, a ``meta.json`` that
names its classes and normalisation, and one npz archive, written and read so that neither a
kill part-way nor a damaged file can pass for a dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ffl import atomic

SPLITS = ("train", "val", "test")


class LabelledSplit:
    """A split: one label per item (``items`` names what the subclass holds: images or paths)."""

    items: ClassVar[str]
    labels: np.ndarray  # (N,) int64

    def check_lengths(self) -> None:
        n = len(getattr(self, self.items))
        if n != len(self.labels):
            raise ValueError(f"{n} {self.items} but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PreparedDataset:
    """``form``: meta.json's ``format`` and the archive's name; ``split``: the class of its splits;
    ``compress``: whether the archive is deflated (file paths are; images would gain little)."""

    name: str
    classes: list[str]
    mean: tuple[float, float, float]  # per-channel, in [0, 1]
    std: tuple[float, float, float]
    splits: dict[str, LabelledSplit]

    form: ClassVar[str]
    split: ClassVar[type[LabelledSplit]]
    compress: ClassVar[bool] = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def extra_meta(self) -> dict:
        """What a form keeps in meta.json beyond the shared fields (read back by ``from_meta``)."""
        return {}

    @classmethod
    def from_meta(cls, meta: dict) -> dict:
        """The constructor's extra arguments, from what ``extra_meta`` wrote (ValueError if malformed)."""
        return {}

    def save(self, directory: str | Path, provenance: dict | None = None) -> None:
        """``provenance``: what the dataset was made from (kept in meta.json for whoever loads it)."""
        field = self.split.items
        arrays = {}
        for split, data in self.splits.items():
            arrays[f"{split}_{field}"] = getattr(data, field)
            arrays[f"{split}_labels"] = data.labels
        meta = prepared_meta(self, self.form, provenance) | self.extra_meta()
        write_prepared(directory, f"{self.form}.npz", arrays, meta, compress=self.compress)

    @classmethod
    def load(cls, directory: str | Path):
        meta, splits = read_prepared(directory, f"{cls.form}.npz", cls.split.items)
        extra = cls.from_meta(meta)
        return cls(meta["name"], meta["classes"], tuple(meta["mean"]), tuple(meta["std"]), {
            s: cls.split(items, labels) for s, (items, labels) in splits.items()
        }, **extra)  # fmt: skip


def prepared_meta(dataset, form: str, provenance: dict | None) -> dict:
    """What ``meta.json`` says of a prepared dataset; ``format`` tells the loader which it is."""
    return {
        "provenance": provenance,
        "format": form,
        "name": dataset.name,
        "classes": dataset.classes,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "sizes": {k: len(v) for k, v in dataset.splits.items()},
    }


def write_prepared(directory: str | Path, filename: str, arrays: dict, meta: dict, compress: bool = False) -> None:
    """Writes the npz ``filename`` then ``meta.json`` (the commit point), each through a rename. The
    old ``meta.json`` goes first: a kill part-way leaves no dataset, never new arrays described by
    the previous dataset's metadata."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)
    with atomic.replacing(directory / filename) as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)
    atomic.write_text(directory / "meta.json", json.dumps(meta, indent=2) + "\n")
    for stale in directory.glob("*.npz"):  # a dataset of the other form prepared here before
        if stale.name != filename:
            stale.unlink()


def read_prepared(directory: str | Path, filename: str, field: str) -> tuple[dict, dict]:
    """``(meta, {split: (<split>_<field>, <split>_labels as int64)})``."""
    directory = Path(directory)
    if not (directory / "meta.json").exists() or not (directory / filename).exists():
        raise FileNotFoundError(f"no prepared dataset in {directory} (run `ffl prepare` first)")
    meta = json.loads((directory / "meta.json").read_text())
    check_meta(meta)
    with np.load(directory / filename) as z:
        arrays = {key: bounded_array(z, key) for key in z.files}
    splits = {s: (arrays[f"{s}_{field}"], arrays[f"{s}_labels"]) for s in SPLITS if f"{s}_labels" in arrays}
    for split in ("train", "test"):
        if not len(splits.get(split, ((), ()))[1]):
            raise ValueError(f"its {split} split is missing or empty")
    for split, (_, labels) in splits.items():
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"{split} labels are {labels.dtype} {labels.shape}, expected one integer per image")
        if len(labels) and not 0 <= labels.min() <= labels.max() < len(meta["classes"]):
            raise ValueError(f"{split} labels go beyond the {len(meta['classes'])} classes of meta.json")
    return meta, {s: (x, y.astype(np.int64)) for s, (x, y) in splits.items()}


# Deflate's best ratio: an archive member cannot truly hold more than this times its compressed size.
DEFLATE_MAX_RATIO = 1032


def bounded_array(z: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    """Member ``key`` of an npz archive, read only if the size its header declares is the size the
    archive holds: numpy allocates what the header says before it reads, so a damaged header of
    a few bytes would otherwise ask for terabytes (and be reported as the machine out of memory)."""
    info = z.zip.getinfo(f"{key}.npy")
    if info.file_size > max(info.compress_size, 1) * DEFLATE_MAX_RATIO:
        raise ValueError(f"{key}: the archive declares {info.file_size:,} bytes for {info.compress_size:,} stored")
    with z.zip.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        header = f.tell()
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header + declared != info.file_size:
        raise ValueError(f"{key}: its header declares {shape} {dtype} ({declared:,} bytes), the archive holds "
                         f"{info.file_size - header:,}")  # fmt: skip
    return z[key]


def check_meta(meta) -> None:
    """meta.json holds what ``prepared_meta`` writes, of the types it writes (ValueError if not)."""
    if not isinstance(meta, dict):
        raise ValueError(f"meta.json holds a {type(meta).__name__}, not a mapping")
    numbers = lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
    checks = {
        "name": lambda v: isinstance(v, str),
        "classes": lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v),
        "mean": numbers,
        "std": lambda v: numbers(v) and all(x > 0 for x in v),
        "provenance": lambda v: v is None or isinstance(v, dict),
    }
    for key, ok in checks.items():
        if key not in meta or not ok(meta[key]):
            raise ValueError(f"meta.json: {key} is missing or malformed ({meta.get(key)!r:.60})")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of every class held out, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = round(len(idx) * fraction)
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))
