"""Batches of image files (ImageNet): decoded and augmented by DataLoader workers, normalised on the device.

The same interface as ``DeviceLoader``, so the engine, the step graph and evaluation take either.
Training draws torchvision's RandomResizedCrop and a horizontal flip, evaluation resizes the
shorter side and centre-crops: the standard ImageNet recipe. Workers hand over uint8 tensors
(a quarter of float32's bytes through shared and pinned memory); the float conversion, the
normalisation and channels_last happen on the device.

Every image's augmentation is drawn from its own seed, a function of (seed, epoch, index): an
epoch is the same whatever the number of workers, and a run resumed at an epoch boundary sees
the same images as one that never stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from ffl.data.files import FileSplit
from ffl.data.images import ImageTooLarge, read_rgb
from ffl.data.loader import Batches, view_seed
from ffl.errors import DataError, one_line


@dataclass(frozen=True)
class FileSettings:
    """How image files become batches."""

    image_size: int = 224  # training: random-resized crop to this; evaluation: centre crop
    resize: int = 256  # evaluation: the shorter side is resized to this before the crop
    workers: int = 8  # DataLoader worker processes (default_workers: as many as there are cores, up to 8)

    def __post_init__(self):
        if self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({self.image_size})")


class _Images(torch.utils.data.Dataset):
    def __init__(self, split: FileSplit, root: str, transform, resize: int):
        self.paths = split.paths
        self.resize = resize  # evaluation's shorter side: what the size check allows for
        self.labels = split.labels
        self.root = Path(root)
        self.transform = transform
        self.base = 0  # set per epoch, before the workers are forked
        self.views = 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        path = self.root / str(self.paths[i])
        try:
            image = read_rgb(path, self.resize)
        except ImageTooLarge as e:
            raise DataError(f"{path}: {e}; scale it down or remove it, then prepare the data again") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # what PIL raises
            raise DataError(
                f"{path}: damaged, empty or not an image ({one_line(e)}); replace or remove it, "
                "then prepare the data again"
            ) from None
        # torchvision's random transforms draw from the global CPU generator: seeding it makes the
        # draw this image's alone; its state is put back for the training loop when workers = 0.
        # (The generator directly: torch.manual_seed also visits every other backend, ~90 us.)
        generator = torch.default_generator
        state = generator.get_state()
        views = []
        try:
            for view in range(self.views):  # view 0 as a one-view run; each further view its own seed
                generator.manual_seed(view_seed(self.base + i, view) % (1 << 63))
                views.append(self.transform(image))
        finally:
            generator.set_state(state)
        return (views[0] if self.views == 1 else torch.stack(views)), int(self.labels[i])


class FileLoader(Batches):
    def __init__(
        self,
        split: FileSplit,
        root: str,
        batch_size: int,
        mean,
        std,
        device="cpu",
        train: bool = False,
        flip: bool = True,
        files: FileSettings = FileSettings(),
        **options,
    ):
        """``train``: random-resized crops (and flips, with ``flip``), else resize and centre-crop.
        ``options``: ``Batches``' (shuffle, drop_last, seed, channels_last, ranks, lockstep, views)."""
        super().__init__(len(split), batch_size, mean, std, device, **options)
        if train:
            steps = [transforms.RandomResizedCrop(files.image_size)]
            steps += [transforms.RandomHorizontalFlip()] if flip else []
        else:
            steps = [transforms.Resize(files.resize), transforms.CenterCrop(files.image_size)]
        self.dataset = _Images(split, root, transforms.Compose([*steps, transforms.PILToTensor()]), files.resize)
        self.dataset.views = self.views
        self.workers = files.workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        key = self.epoch_key
        self.dataset.base = key * len(self.dataset)
        # The epoch's order is RandomSampler's (randperm from the epoch's generator); the batches are
        # this rank's parts of the global ones (ffl.distributed).
        n = len(self.dataset)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(key)) if self.shuffle else torch.arange(n)
        # Workers are started per epoch (not persistent) so that each one holds this epoch's base.
        batches = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[order[start:stop].tolist() for start, stop in self.rank_batches()],
            generator=torch.Generator().manual_seed(key),  # the workers' base seed: not the training RNG's draw
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in _named_failures(batches):
            if self.views > 1:  # (B, V, C, H, W) -> the views one after the other along the batch
                x = x.transpose(0, 1).flatten(0, 1)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            x = self.normalise(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def _named_failures(batches):
    """A worker's DataError comes back wrapped in its traceback: the file's line alone again."""
    try:
        yield from batches
    except DataError as e:
        raise DataError(one_line(e)) from None


def default_workers(most: int = 8) -> int:
    """Decoding workers for this machine: the cores this process may use, at most ``most`` (more
    workers than cores only make PyTorch warn and the processes take turns)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(most, cores))
