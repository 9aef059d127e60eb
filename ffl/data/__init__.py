from ffl.data.arrays import ArrayDataset, Split
from ffl.data.cifar import DatasetNotFound, load_cifar
from ffl.data.file_loader import FileLoader, FileSettings
from ffl.data.files import FileDataset, FileSplit, load_imagefolder, load_imagenet
from ffl.data.loader import Augment, DeviceLoader
from ffl.data.prepared import Dataset, load_dataset, prepared_provenance, split_loader
from ffl.data.synthetic import make_shapes

__all__ = [
    "ArrayDataset",
    "Augment",
    "Dataset",
    "DatasetNotFound",
    "DeviceLoader",
    "FileDataset",
    "FileLoader",
    "FileSettings",
    "FileSplit",
    "Split",
    "load_cifar",
    "load_dataset",
    "load_imagefolder",
    "load_imagenet",
    "make_shapes",
    "prepared_provenance",
    "split_loader",
]
