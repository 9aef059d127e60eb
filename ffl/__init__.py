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
from ffl.methods import DML, FFL, KDCL, LMCL, MCL, METHODS, ONE, PCL, DualNet, Method, OKDDip, Vanilla, build_method
from ffl.metrics import evaluate

__all__ = [
    "DML",
    "FFL",
    "KDCL",
    "LMCL",
    "MCL",
    "METHODS",
    "ONE",
    "PCL",
    "ArrayDataset",
    "Augment",
    "Callback",
    "DeviceLoader",
    "DualNet",
    "FileDataset",
    "FileLoader",
    "FileSettings",
    "FusionModule",
    "Method",
    "NonFiniteLoss",
    "OKDDip",
    "PrintEpochs",
    "TrainConfig",
    "Trainer",
    "Vanilla",
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
