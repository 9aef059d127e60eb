"""The prepared dataset, whichever form it takes, and the loader of one of its splits."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ffl.data.arrays import ArrayDataset
from ffl.data.dataset import check_meta
from ffl.data.file_loader import FileLoader, FileSettings
from ffl.data.files import FileDataset
from ffl.data.loader import Augment, DeviceLoader
from ffl.distributed import Ranks

Dataset = ArrayDataset | FileDataset
FORMS = {form.form: form for form in (ArrayDataset, FileDataset)}


def load_dataset(directory: str | Path) -> Dataset:
    """What ``ArrayDataset.save`` or ``FileDataset.save`` wrote (``meta.json`` says which)."""
    directory = Path(directory)
    if not (directory / "meta.json").exists():
        raise FileNotFoundError(f"no prepared dataset in {directory} (run `ffl prepare` first)")
    meta = json.loads((directory / "meta.json").read_text())
    check_meta(meta)
    form = meta.get("format", "arrays")
    if form not in FORMS:
        raise ValueError(f"unknown prepared format {form!r}")
    return FORMS[form].load(directory)


def prepared_provenance(directory: str | Path) -> dict | None:
    """What the prepared dataset in ``directory`` was made from, as its ``save`` was told."""
    meta = Path(directory) / "meta.json"
    made_with = json.loads(meta.read_text()).get("provenance") if meta.exists() else None
    return made_with if isinstance(made_with, dict) else None


def split_loader(
    data: Dataset,
    split: str,
    batch_size: int,
    device: torch.device | str,
    *,
    train: bool = False,
    keep_last: bool = False,
    seed: int = 0,
    channels_last: bool = False,
    augment: Augment = Augment(),
    files: FileSettings = FileSettings(),
    ranks: Ranks = Ranks(),
    views: int = 1,
):
    """Training batches (shuffled, augmented; the last partial batch dropped unless ``keep_last``, as
    the authors' protocol keeps it) when ``train``, else every sample in order. Under DDP each
    rank gets its part of every batch of ``batch_size`` (ffl.distributed). ``views``: independently
    augmented views of every training batch, stacked along the batch (Method.train_views)."""
    options = dict(
        shuffle=train,
        drop_last=train and not keep_last,
        seed=seed,
        channels_last=channels_last,
        ranks=ranks,
        lockstep=train,
        views=views if train else 1,
    )
    if isinstance(data, FileDataset):
        args = (data.splits[split], data.root, batch_size, data.mean, data.std, device)
        return FileLoader(*args, train=train, flip=augment.flip, files=files, **options)
    return DeviceLoader(
        data.splits[split], batch_size, data.mean, data.std, device, augment=augment if train else None, **options
    )
