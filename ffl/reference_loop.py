"""A faithful port of the authors' training loop (github.com/Jangho-Kim/FFL-pytorch, train_FFL.py),
the baseline ``ffl bench`` times this project's step against: a DataLoader of PIL images with
torchvision transforms (reflect pad, flip, crop, to-tensor, normalise) and their 4 workers, eager
fp32 NCHW, two SGD optimisers (sub-networks, fusion module), and a ``loss.item()`` plus
per-classifier accuracy read back to the host every step."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ffl.data import Split
from ffl.data.cifar import CIFAR100_MEAN, CIFAR100_STD
from ffl.methods import FFL


@dataclass
class Result:
    label: str
    images_per_s: float
    step_ms: float
    compile_s: float = 0.0
    step: str = ""  # how the step ran (step_label)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_cifar(n: int, num_classes: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, num_classes, n))


class PILArrays(torch.utils.data.Dataset):
    """torchvision's CIFAR ``__getitem__``: a uint8 HWC array -> PIL image -> transform."""

    def __init__(self, split: Split, transform):
        self.data = np.ascontiguousarray(split.images.transpose(0, 2, 3, 1))
        self.targets = split.labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def reference(archs, num_classes, batch_size, device, steps, warmup, workers: int = 4) -> Result:
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Pad(4, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )
    data = random_cifar(batch_size * (steps + warmup + 1), num_classes)
    loader = torch.utils.data.DataLoader(
        PILArrays(data, transform), batch_size=batch_size, shuffle=True, num_workers=workers
    )
    torch.manual_seed(0)
    method = FFL(list(archs), num_classes).to(device)
    sub_params = [p for n, p in method.named_parameters() if not n.startswith("fusion.")]
    opt = torch.optim.SGD(sub_params, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    opt_fm = torch.optim.SGD(method.fusion.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5, nesterov=True)
    method.train()
    it = iter(loader)
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        opt_fm.zero_grad()
        out = method(x)
        loss = sum(method.loss(out, y, 100).values())
        loss.backward()
        opt.step()
        opt_fm.step()
        _ = loss.item()  # the authors' running loss: a host sync every step
        for name in ("sub0", "sub1", "fused"):
            _ = out[name].argmax(1).eq(y).cpu().sum().item()
    sync(device)
    dt = time.perf_counter() - t0
    return Result("reference", steps * batch_size / dt, 1000 * dt / steps)
