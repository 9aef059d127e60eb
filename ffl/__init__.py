"""Feature Fusion Learning and the online-distillation baselines, trainable in a few lines.

from ffl import FFL, Trainer, TrainConfig, DeviceLoader, Augment, make_shapes
data = make_shapes()
method = FFL(["resnet20", "resnet20"], num_classes=data.num_classes)
train = DeviceLoader(data.splits["train"], 128, data.mean, data.std, augment=Augment(), shuffle=True)
Trainer(method, train, TrainConfig(epochs=10, milestones=[5, 8])).fit()
"""

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
from ffl.methods import DML, FFL, METHODS, ONE, DualNet, Vanilla, build_method
from ffl.metrics import evaluate

__all__ = [
    "DML",
    "FFL",
    "METHODS",
    "ONE",
    "ArrayDataset",
    "Augment",
    "DeviceLoader",
    "DualNet",
    "FileDataset",
    "FileLoader",
    "FileSettings",
    "FusionModule",
    "NonFiniteLoss",
    "TrainConfig",
    "Trainer",
    "Vanilla",
    "build_method",
    "evaluate",
    "load_cifar",
    "load_imagefolder",
    "load_imagenet",
    "make_shapes",
    "split_loader",
]
