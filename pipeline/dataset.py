"""The prepared dataset as every command reads it: loaded back only when it was made from the same
data params (and a model only when trained on them), and turned into batches the one way every
stage and trial does it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ffl import distributed
from ffl.config_diff import described, differences
from ffl.data import Augment, Dataset, FileDataset, FileSettings, load_dataset, prepared_provenance, split_loader
from ffl.data.file_loader import default_workers
from pipeline import paths
from pipeline.errors import UserError
from pipeline.params import Params


def check_provenance(what: str, made_with: dict | None, params: Params, fix: str) -> None:
    """``what`` (prepared data, a model) was made with the data params these params ask for."""
    wanted = params.data.provenance()
    if made_with is None:
        raise UserError(f"{what}: made by an older version of ffl, with no record of its data params; {fix}")
    if not isinstance(made_with, dict):
        raise UserError(f"{what}: its record of the data params is malformed; {fix}")
    differ = [d for d in differences(made_with, wanted) if d[0] in wanted]
    if differ:
        raise UserError(f"{what}: made with other data params ({described(differ)}); {fix}")


def load_prepared(params: Params, directory: Path = paths.PREPARED) -> Dataset:
    """The prepared dataset, refused unless it was made from these params' data settings."""
    try:
        data = load_dataset(directory)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(
            f"{directory}: prepared dataset is unreadable ({e}); run `{params.command('prepare')}` again"
        ) from None
    check_provenance(
        str(directory),
        prepared_provenance(directory),
        params,
        f"run `{params.command('prepare')}` (`dvc repro` runs it)",
    )
    if isinstance(data, FileDataset):
        # The index holds paths, not pixels: found out here, not in a DataLoader worker mid-epoch.
        first = Path(data.root) / str(data.splits["train"].paths[0])
        if not first.is_file():
            raise UserError(
                f"{directory}: indexes images under {data.root}, but {first} is not there "
                f"(moved? set data.root and run `{params.command('prepare')}` again)"
            )
    return data


def loader(
    params: Params,
    data: Dataset,
    split: str,
    device: torch.device,
    train: bool = False,
    ranks: distributed.Ranks = distributed.Ranks(),
    views: int = 1,
):
    """The one way the stages (and tune trials) turn a prepared split into batches (this rank's
    part of each, under DDP)."""
    a, f = params.data.augment, params.data.files
    return split_loader(
        data,
        split,
        params.train.batch_size if train else params.evaluate.batch_size,
        device,
        train=train,
        keep_last=params.data.keep_last_batch(),
        seed=params.seed,
        channels_last=params.train.channels_last,
        augment=Augment(a.pad, a.pad_mode, a.flip),
        files=FileSettings(f.image_size, f.resize, default_workers() if f.workers == "auto" else f.workers),
        ranks=ranks,
        views=views,
    )
