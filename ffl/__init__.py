"""Feature Fusion Learning and the online-distillation baselines, trainable in a few lines.

from ffl import FFL, Trainer, TrainConfig, DeviceLoader, Augment, PrintEpochs, make_shapes
data = make_shapes(1000, 1000)
method = FFL(["resnet8", "resnet8"], num_classes=data.num_classes, rampup_epochs=5)
train = DeviceLoader(data.splits["train"], 64, data.mean, data.std, augment=Augment(), shuffle=True, drop_last=True)
Trainer(method, train, TrainConfig(epochs=30, milestones=[15, 23]), callbacks=[PrintEpochs()]).fit()
"""

from ffl.artifact import load_model, save_model
from ffl.callbacks import Callback, PrintEpochs
from ffl.data import (
    ArrayDataset,
    Augment,
    DeviceLoader,
    FileDataset,
    FileLoader,
    FileSettings,
    load_cifar,
    load_imagefolder,
    load_imagenet,
    make_shapes,
    split_loader,
)
from ffl.engine import NonFiniteLoss, TrainConfig, Trainer
from ffl.fusion import FusionModule
from ffl.methods import METHODS, Method, build_method
from ffl.metrics import evaluate


def __getattr__(attr: str):
    # Method classes by their Python name (ffl.FFL, ffl.DML, ...), from the registry: a new method
    # file is importable from here without this file naming it.
    from ffl import methods

    return getattr(methods, attr)


__all__ = [
    "METHODS",
    "ArrayDataset",
    "Augment",
    "Callback",
    "DeviceLoader",
    "FileDataset",
    "FileLoader",
    "FileSettings",
    "FusionModule",
    "Method",
    "NonFiniteLoss",
    "PrintEpochs",
    "TrainConfig",
    "Trainer",
    "build_method",
    "evaluate",
    "load_cifar",
    "load_imagefolder",
    "load_imagenet",
    "load_model",
    "make_shapes",
    "save_model",
    "split_loader",
]
