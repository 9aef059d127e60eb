"""A batch loader for datasets that fit on the training device (CIFAR: 150 MB as uint8).

The whole split lives on the device as uint8; every epoch draws its permutation, crop offsets and
flips from a generator seeded by (seed, epoch) in one go, so an epoch is reproducible on its own
(resuming mid-run needs no loader state) and the loop never waits on the host. Cropping,
flipping and normalising happen on whole batches on the device (the cifar10-airbench recipe):
a DataLoader of PIL images is what starves small CIFAR networks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ffl.data.arrays import Split
from ffl.distributed import Ranks, shard, usable_batches


def view_seed(key: int, view: int) -> int:
    """The seed of augmented view ``view`` of whatever ``key`` seeds (an epoch, an image): view 0
    keeps the key itself (a one-view run is unchanged), each further view gets its own."""
    return key if view == 0 else (key + view * 0x9E3779B97F4A7C15) % (1 << 63)


@dataclass(frozen=True)
class Augment:
    pad: int = 4
    pad_mode: str = "reflect"  # reflect | constant (zeros) | replicate
    flip: bool = True


class Batches:
    """What the engine, the step graph and evaluation read of a loader, whichever feeds it. The
    keyword options are every loader's (``DeviceLoader`` and ``FileLoader`` pass them on as they are)."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        mean,
        std,
        device: torch.device | str = "cpu",
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        ranks: Ranks = Ranks(),
        lockstep: bool = False,
        views: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size < ranks.world:
            raise ValueError(f"batch_size {batch_size} leaves some of the {ranks.world} processes without samples")
        self.device = torch.device(device)
        self.size = size
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.channels_last = channels_last
        # Under DDP (ffl.distributed): this process's part of every global batch of batch_size.
        self.ranks = ranks
        # Training under DDP steps every rank in lockstep: a last batch too small to give every rank
        # a sample is dropped. Evaluation keeps every sample (a rank may get an empty part).
        self.lockstep = lockstep
        # Independently augmented views of every batch (methods that give each network its own,
        # ffl.methods.base.Method.train_views): stacked along the batch, view v in rows v*B:(v+1)*B.
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.views = views
        self.epoch = 0

    def __len__(self) -> int:
        """Global batches, the same number on every rank."""
        world = self.ranks.world if self.lockstep else 1
        return usable_batches(self.size, self.batch_size, self.drop_last, world)

    @property
    def num_samples(self) -> int:
        """Samples an epoch uses, over all ranks."""
        return sum(stop - start for start, stop in self.global_batches())

    def global_batches(self) -> list[tuple[int, int]]:
        """[start, stop) positions in the epoch's order of every global batch."""
        return [(i * self.batch_size, min((i + 1) * self.batch_size, self.size)) for i in range(len(self))]

    def rank_batches(self) -> list[tuple[int, int]]:
        """This rank's part of each global batch (empty parts left out)."""
        parts = [shard(start, stop, self.ranks) for start, stop in self.global_batches()]
        return [(start, stop) for start, stop in parts if stop > start]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def epoch_key(self) -> int:
        """The seed of this epoch's draws: (seed, epoch) alone, so an epoch reproduces on its own."""
        return self.seed * 1_000_003 + self.epoch

    def view_key(self, view: int) -> int:
        """The seed of a view's augmentation draws for the whole epoch (``view_seed``)."""
        return view_seed(self.epoch_key, view)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch on the device -> float, per-channel normalised."""
        return (x.float() - self.mean) / self.std


class DeviceLoader(Batches):
    def __init__(
        self, split: Split, batch_size: int, mean, std, device="cpu", augment: Augment | None = None, **options
    ):
        """``options``: ``Batches``' (shuffle, drop_last, seed, channels_last, ranks, lockstep, views)."""
        super().__init__(len(split), batch_size, mean, std, device, **options)
        self.images = torch.from_numpy(split.images).to(self.device)
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.augment = augment

    def _plan(self):
        """The epoch's order, and each view's crop offsets and flips (None without augmentation)."""
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.epoch_key)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        draws = []
        if self.augment is not None:
            for view in range(self.views):
                if view:
                    g = torch.Generator().manual_seed(self.view_key(view))
                offsets = torch.randint(0, 2 * self.augment.pad + 1, (n, 2), generator=g)
                flips = torch.rand(n, generator=g) < 0.5
                draws.append((offsets.to(self.device), flips.to(self.device)))
        return order.to(self.device), draws

    def _crop(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        p = self.augment.pad
        mode = "constant" if self.augment.pad_mode == "zeros" else self.augment.pad_mode
        padded = F.pad(x, (p, p, p, p), mode=mode)
        b, _, h, w = x.shape
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
        idx_b = torch.arange(b, device=x.device)[:, None, None, None]
        idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[idx_b, idx_c, rows, cols]

    def _augmented(self, x: torch.Tensor, idx: torch.Tensor, offsets, flips) -> torch.Tensor:
        if self.augment.pad:
            x = self._crop(x, offsets[idx])
        if self.augment.flip:
            x = torch.where(flips[idx, None, None, None], x.flip(3), x)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, draws = self._plan()
        for start, stop in self.rank_batches():
            idx = order[start:stop]
            x = self.normalise(self.images[idx])
            if draws:
                x = torch.cat([self._augmented(x, idx, *draw) for draw in draws])
            elif self.views > 1:
                x = x.repeat(self.views, 1, 1, 1)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
