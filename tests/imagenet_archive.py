"""Writes a tiny ImageNet in the real on-disk format: the ILSVRC2012 devkit (meta.mat, validation
ground truth), a train tar of per-class tars and a flat val tar of JPEGs, as torchvision parses them."""

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")
WORDS = ("tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def jpeg(rng, size) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _meta_mat() -> bytes:
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height"]
    rows = [(i + 1, w, words, "a fish", 0, np.zeros((0,)), 0) for i, (w, words) in enumerate(zip(WNIDS, WORDS))]
    # A non-leaf synset, as the real file has: torchvision keeps only the leaves (the 1,000 classes).
    rows.append((len(WNIDS) + 1, "n02512053", "fish", "any of various fishes", 3, np.arange(1, 4), 1))
    synsets = np.empty(len(rows), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        synsets[i] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def write_imagenet(root: Path, train_per_class: int = 6, val_per_class: int = 2, seed: int = 0) -> dict:
    """Writes the three archives under ``root``; returns torchvision's ARCHIVE_META for them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(40, 48), (48, 40), (36, 36)]  # not square, not the crop size: the loader resizes
    val_labels = [c for c in range(len(WNIDS)) for _ in range(val_per_class)]
    rng.shuffle(val_labels)

    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", _meta_mat())
        truth = "".join(f"{c + 1}\n" for c in val_labels)  # ILSVRC2012_IDs, in file-name order
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth.encode())

    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as tar:
        for wnid in WNIDS:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(train_per_class):
                    _add(class_tar, f"{wnid}_{i}.JPEG", jpeg(rng, sizes[i % len(sizes)]))
            _add(tar, f"{wnid}.tar", inner.getvalue())

    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(len(val_labels)):
            _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg(rng, sizes[i % len(sizes)]))

    return {
        key: (name, md5(root / name))
        for key, name in (
            ("train", "ILSVRC2012_img_train.tar"),
            ("val", "ILSVRC2012_img_val.tar"),
            ("devkit", "ILSVRC2012_devkit_t12.tar.gz"),
        )
    }


def trust_written_archives(monkeypatch, archive_meta: dict) -> None:
    """Points torchvision's expected md5 sums at the archives the test wrote; the check itself stays."""
    import torchvision.datasets.imagenet as imagenet

    for key, value in archive_meta.items():
        monkeypatch.setitem(imagenet.ARCHIVE_META, key, value)


def write_imagefolder(root: Path, classes=("cat", "dog"), per_class: dict | None = None, seed: int = 0) -> None:
    """``root/train/<class>/*.jpg`` and ``root/val/<class>/*.png`` (any format PIL reads)."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 8, "val": 3}
    for split, n in per_class.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = root / split / c / f"{i}.{'jpg' if split == 'train' else 'png'}"
                Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(path)


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` RGB pixels (a
    decompression bomb as a reader meets it: the header is all that is read before decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path
