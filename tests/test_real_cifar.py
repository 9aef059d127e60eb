"""The genuine CIFAR-10 (official binary version), where the machine has it: CI keeps it in
../shared/datasets beside its clone (FFL_CIFAR10_ROOT points elsewhere). A fresh clone without it
skips, saying why."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ffl.data import Augment, DeviceLoader, load_dataset
from ffl.engine import TrainConfig, Trainer
from ffl.methods import FFL
from pipeline.params import apply_overrides, validate
from pipeline.stages.prepare import prepare
from tests.helpers import ROOT, tiny_params

DATASETS = Path(os.environ.get("FFL_CIFAR10_ROOT", ROOT.parent / "shared" / "datasets"))

pytestmark = pytest.mark.skipif(
    not (DATASETS / "cifar-10-batches-bin").is_dir() and not (DATASETS / "cifar-10-batches-py").is_dir(),
    reason=f"genuine CIFAR-10 is not at {DATASETS} (set FFL_CIFAR10_ROOT to a folder holding "
    "cifar-10-batches-bin/ or cifar-10-batches-py/)",
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """`ffl prepare`'s stage on the real files, the authors' protocol (every training image)."""
    out = tmp_path_factory.mktemp("cifar10") / "prepared"
    raw = apply_overrides(tiny_params(), ["data.source=cifar10", f"data.root={DATASETS}", "data.protocol=paper"])
    prepare(validate(raw), out)
    return load_dataset(out)


def test_the_real_cifar10_has_its_published_counts_labels_and_statistics(prepared):
    train, test = prepared.splits["train"], prepared.splits["test"]
    assert (len(train), len(test), len(prepared.splits["val"])) == (50_000, 10_000, 0)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == np.uint8
    assert np.array_equal(np.bincount(train.labels), [5_000] * 10)
    assert np.array_equal(np.bincount(test.labels), [1_000] * 10)
    assert prepared.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    # The published training-set statistics (../shared/datasets/README.md), which the loaders normalise with.
    assert prepared.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=5e-5)
    assert prepared.std == pytest.approx((0.2470, 0.2435, 0.2616), abs=5e-5)


def test_one_training_step_on_real_images(prepared):
    torch.manual_seed(0)
    train = prepared.splits["train"]
    subset = type(train)(train.images[:128], train.labels[:128])
    loader = DeviceLoader(subset, 128, prepared.mean, prepared.std, augment=Augment(), shuffle=True, drop_last=True)
    method = FFL(["resnet8", "resnet8"], 10)
    before = {k: v.detach().clone() for k, v in method.named_parameters()}
    metrics = Trainer(method, loader, TrainConfig(epochs=1, milestones=[], precision="fp32")).train_epoch(0)
    assert np.isfinite(metrics["train/loss/total"]) and 1.5 < metrics["train/loss/ce_fused"] < 4.0  # ~ln 10 at start
    assert any(not torch.equal(v, before[k]) for k, v in method.named_parameters())
