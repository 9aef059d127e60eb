"""Datasets too large to hold in memory (ImageNet): the prepared form is an index of image files.

``imagenet`` goes through torchvision's ``ImageNet``, which checks the md5 of the devkit and of
each archive before extracting it (once, into the root) and names the classes by WordNet id;
``imagefolder`` reads any ``root/train/<class>/*`` + ``root/val/<class>/*`` layout through
``ImageFolder`` (an ImageNet already extracted that way, Tiny-ImageNet, a dataset of your own).
Either way a validation split is held out of ``train`` for model selection and tuning, and the
``val`` folder is the test split, the one ImageNet papers report.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ffl.data.cifar import DatasetNotFound
from ffl.data.dataset import LabelledSplit, PreparedDataset, stratified_split
from ffl.errors import one_line

# torchvision's ImageNet weights normalise with these; they serve any natural-image folder too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


@dataclass
class FileSplit(LabelledSplit):
    paths: np.ndarray  # (N,) str, relative to the dataset's root
    labels: np.ndarray  # (N,) int64

    items: ClassVar[str] = "paths"

    def __post_init__(self):
        self.paths = np.asarray(self.paths, dtype=str)  # fixed-width unicode: no pickle on load
        self.check_lengths()


@dataclass
class FileDataset(PreparedDataset):
    splits: dict[str, FileSplit]
    _: KW_ONLY
    root: str  # absolute: the prepared index may be read from another working directory

    form: ClassVar[str] = "files"
    split: ClassVar[type[FileSplit]] = FileSplit
    compress: ClassVar[bool] = True

    def extra_meta(self) -> dict:
        return {"root": self.root}

    @classmethod
    def from_meta(cls, meta: dict) -> dict:
        if not isinstance(meta.get("root"), str):
            raise ValueError("meta.json: root is missing or malformed")
        return {"root": meta["root"]}


def _index(folder, root: Path) -> FileSplit:
    """An ImageFolder's samples as paths relative to ``root``."""
    paths = np.array([os.path.relpath(p, root) for p, _ in folder.samples], dtype=str)
    return FileSplit(paths, np.asarray(folder.targets, dtype=np.int64))


def _with_val(name: str, classes, root: Path, train: FileSplit, test: FileSplit, val_fraction: float, seed: int):
    keep, held = stratified_split(train.labels, val_fraction, seed)
    splits = {
        "train": FileSplit(train.paths[keep], train.labels[keep]),
        "val": FileSplit(train.paths[held], train.labels[held]),
        "test": test,
    }
    return FileDataset(name, list(classes), IMAGENET_MEAN, IMAGENET_STD, splits, root=str(root))


def load_imagenet(root: str | Path, val_fraction: float, seed: int) -> FileDataset:
    """ImageNet-1k through torchvision (archives checked and extracted on first use; needs scipy)."""
    from torchvision.datasets import ImageNet

    given, root = root, Path(root).resolve()
    try:
        train, test = ImageNet(str(root), split="train"), ImageNet(str(root), split="val")
    except RuntimeError as e:
        # torchvision's own message names the one archive it stopped at; say what the whole set is.
        raise DatasetNotFound(
            f"imagenet not found or corrupted under {given}: {one_line(e)} "
            f"(expected {', '.join(IMAGENET_ARCHIVES)} with torchvision's md5 checksums; they cannot be "
            f"downloaded automatically)"
        ) from None
    except ModuleNotFoundError as e:
        raise DatasetNotFound(f"imagenet: reading the devkit needs {e.name} (pip install {e.name})") from None
    if train.wnids != test.wnids:
        raise DatasetNotFound(f"imagenet under {given}: train and val have different classes")
    return _with_val("imagenet", train.wnids, root, _index(train, root), _index(test, root), val_fraction, seed)


def load_imagefolder(root: str | Path, val_fraction: float, seed: int) -> FileDataset:
    """``root/train/<class>/<image>`` and ``root/val/<class>/<image>`` (val is the test split).

    Each file is indexed once, under the class folder it lies in: links are followed only to files
    inside their own class folder (a link to a parent folder would index other classes' images
    under this class, and the same file in both the training and the validation split), and a file
    reached twice (a link, a hard link, a link from val/ into train/) is indexed where it is met
    first. What was skipped is said in one warning."""
    from torchvision.datasets.folder import find_classes

    given, root = root, Path(root).resolve()
    found, skipped, seen = {}, {}, set()
    for split in ("train", "val"):
        try:
            classes, _ = find_classes(str(root / split))
            found[split] = (classes, _index_classes(root, split, classes, seen, skipped))
            if not len(found[split][1]):
                raise FileNotFoundError(f"no image files in {root / split}")
        except (OSError, RuntimeError) as e:
            raise DatasetNotFound(
                f"imagefolder under {given}: {split}/ is missing or empty ({one_line(e)}); "
                f"expected {given}/train/<class>/<image> and {given}/val/<class>/<image>"
            ) from None
    (classes, train), (test_classes, test) = found["train"], found["val"]
    if classes != test_classes:
        only = sorted(set(classes) ^ set(test_classes))
        raise DatasetNotFound(
            f"imagefolder under {given}: train/ and val/ have different classes ({', '.join(only[:5])})"
        )
    if skipped:
        warnings.warn(
            f"imagefolder under {given}: {sum(skipped.values())} files skipped ("
            + "; ".join(f"{why}: {n}" for why, n in skipped.items())
            + ")",
            stacklevel=2,
        )
    return _with_val("imagefolder", classes, root, train, test, val_fraction, seed)


def _index_classes(root: Path, split: str, classes: list[str], seen: set, skipped: dict) -> FileSplit:
    """The image files of ``root/split/<class>/`` (sorted, as ImageFolder orders them), each file
    once over every split (``seen``: their (device, inode)); ``skipped`` counts the others by reason."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / split / name
        inside = os.path.realpath(folder)
        for here, dirs, files in sorted(os.walk(folder)):  # links to folders are listed, not entered
            for d in dirs:
                if os.path.islink(os.path.join(here, d)):
                    skip("links to folders (not followed)")
            for f in sorted(files):
                path = os.path.join(here, f)
                if not f.lower().endswith(IMG_EXTENSIONS):
                    continue
                real = os.path.realpath(path)
                if os.path.commonpath([real, inside]) != inside:
                    skip("links out of their class folder")
                    continue
                try:
                    info = os.stat(real)
                except OSError:
                    skip("broken links")
                    continue
                if (info.st_dev, info.st_ino) in seen:
                    skip("files indexed already (links or hard links to one file)")
                    continue
                seen.add((info.st_dev, info.st_ino))
                paths.append(os.path.relpath(path, root))
                labels.append(label)
    return FileSplit(np.array(paths, dtype=str), np.asarray(labels, dtype=np.int64))
