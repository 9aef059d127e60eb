"""The prepare stage: the dataset made from the params (uint8 arrays, or an index of image files),
in data/prepared; pipeline.dataset reads it back."""

from __future__ import annotations

from pathlib import Path

from ffl.data import (
    Dataset,
    DatasetNotFound,
    load_cifar,
    load_imagefolder,
    load_imagenet,
    make_shapes,
)
from pipeline import paths
from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.runtime import ensure_writable


def prepare(params: Params, out: Path = paths.PREPARED) -> Dataset:
    """Small datasets become uint8 arrays; image-file datasets (ImageNet) an index of their files."""
    d = params.data
    try:
        if d.source == "shapes":
            s = d.shapes
            data = make_shapes(s.train_per_class, s.test_per_class, d.split_fraction(), s.noise, d.seed)
        elif d.source == "imagenet":
            data = load_imagenet(d.root, d.split_fraction(), d.seed)
        elif d.source == "imagefolder":
            data = load_imagefolder(d.root, d.split_fraction(), d.seed)
        else:
            data = load_cifar(d.source, d.root, d.split_fraction(), d.seed, download=d.download)
    except DatasetNotFound as e:
        raise UserError(f"data.root: {e}") from None
    ensure_writable(out)
    data.save(out, params.data.provenance())
    return data
