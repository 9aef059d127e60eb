from ffl.data.arrays import ArrayDataset, Split
from ffl.data.cifar import DatasetNotFound, load_cifar
from ffl.data.loader import Augment, DeviceLoader
from ffl.data.synthetic import make_shapes

__all__ = ["ArrayDataset", "Augment", "DatasetNotFound", "DeviceLoader", "Split", "load_cifar", "make_shapes"]
