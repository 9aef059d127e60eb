"""Measure before building: the upside of the next speed levers for the FFL step (issue #3).

The whole-step CUDA graph leaves a ResNet-32 FFL step GPU-kernel-bound (~800 kernels of a few
microseconds, docs/benchmarks.md): the kernels are too small to fill a large GPU. Each candidate
below is timed in isolation, forward and backward, on the shapes of the real step:

- branches: the per-branch stage 3 of N branches run one after another (today's default), as one
  grouped stage (the branches' convolutions stacked into grouped convolutions: N times fewer,
  N times larger kernels), and on N CUDA streams (`SubNetworks.concurrent_branches`);
- stem: the 3-channel stem convolution against the same convolution on input and weights
  zero-padded to 4 and 8 channels (an identical result; tensor-core kernels want multiples of 8);
- kernels (GPU): the step's most expensive kernels, eager and compiled, from the profiler.

On a GPU each variant is captured in a CUDA graph and replayed (what the training step does);
on a CPU it runs eagerly. Run: ``python benchmarks/gpu_levers.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from ffl.models.cifar_resnet import _stage


class GroupedBlock(nn.Module):
    """N BasicBlocks side by side as one: channels stacked, convolutions grouped by branch."""

    def __init__(self, in_planes: int, planes: int, branches: int, stride: int, first: bool):
        super().__init__()
        n = branches
        # The first block of every branch reads the same shared map: one ungrouped convolution.
        self.conv1 = nn.Conv2d(
            in_planes * (1 if first else n), planes * n, 3, stride, 1, bias=False, groups=1 if first else n
        )
        self.bn1 = nn.BatchNorm2d(planes * n)
        self.conv2 = nn.Conv2d(planes * n, planes * n, 3, 1, 1, bias=False, groups=n)
        self.bn2 = nn.BatchNorm2d(planes * n)
        self.shortcut = None
        if first:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * n, 1, stride, bias=False), nn.BatchNorm2d(planes * n)
            )

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


def timed(fn, x, device: torch.device, steps: int) -> float:
    """ms per call of ``fn(x)``: replayed from a CUDA graph on a GPU, eager on a CPU."""
    if device.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(x)
        run = graph.replay
    else:
        fn(x)

        def run():
            fn(x)

    for _ in range(5):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / steps


def fwd_bwd(module, dtype, device):
    def step(x):
        with torch.autocast(device.type, dtype):
            y = module(x)
        y.float().sum().backward()

    return step


def branches(n: int, batch: int, device: torch.device, dtype, steps: int) -> dict[str, float]:
    cl = torch.channels_last
    x = torch.randn(batch, 32, 16, 16, device=device).contiguous(memory_format=cl)
    blocks = 5  # resnet32: 5 blocks a stage
    sequential = nn.ModuleList(_stage(32, 64, blocks, 2) for _ in range(n)).to(device, memory_format=cl)
    grouped = nn.Sequential(
        GroupedBlock(32, 64, n, 2, True), *[GroupedBlock(64, 64, n, 1, False) for _ in range(blocks - 1)]
    ).to(device, memory_format=cl)
    out = {
        "sequential": timed(
            fwd_bwd(lambda x: torch.cat([m(x) for m in sequential], 1), dtype, device), x, device, steps
        ),
        "grouped": timed(fwd_bwd(grouped, dtype, device), x, device, steps),
    }
    if device.type == "cuda":
        streams = [torch.cuda.Stream() for _ in range(n)]

        def concurrent(x):
            main, feats = torch.cuda.current_stream(), []
            for stream, m in zip(streams, sequential):
                stream.wait_stream(main)
                with torch.cuda.stream(stream):
                    feats.append(m(x))
            for stream in streams:
                main.wait_stream(stream)
            return torch.cat(feats, 1)

        out["streams"] = timed(fwd_bwd(concurrent, dtype, device), x, device, steps)
    return out


def stem(batch: int, device: torch.device, dtype, steps: int) -> dict[str, float]:
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False).to(device, memory_format=torch.channels_last)
    out = {}
    for channels in (3, 4, 8):

        def padded(x, c=channels):
            pad = (0, 0, 0, 0, 0, c - 3)
            return F.conv2d(F.pad(x, pad), F.pad(conv.weight, pad), padding=1)

        out[f"{channels} channels"] = timed(fwd_bwd(padded, dtype, device), x, device, steps)
    return out


def kernels(batch: int, device: torch.device, modes=(None,)) -> None:
    from torch.profiler import ProfilerActivity, profile

    from ffl.data import Augment, DeviceLoader
    from ffl.engine import TrainConfig, Trainer
    from ffl.methods import FFL
    from ffl.reference_loop import random_cifar

    steps = 20
    for mode in modes:
        loader = DeviceLoader(
            random_cifar(batch * steps, 100), batch, (0.5,) * 3, (0.25,) * 3, device,
            augment=Augment(), shuffle=True, drop_last=True, channels_last=True,
        )  # fmt: skip
        trainer = Trainer(FFL(["resnet32", "resnet32"], 100), loader, TrainConfig(precision="bf16", compile=mode))
        trainer.train_epoch(1)
        trainer.train_epoch(1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            trainer.train_epoch(1)
            torch.cuda.synchronize()
        events = [e for e in prof.events() if e.device_type.name == "CUDA"]
        busy = sum(e.device_time for e in events) / steps / 1000
        print(f"\n### Kernels of one step, compile {mode}: {len(events) / steps:.0f} kernels, {busy:.2f} ms GPU busy\n")
        print(prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=80))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, help="timed calls per variant (default: 200 on a GPU, 10 on a CPU)")
    p.add_argument(
        "--compiled-kernels", action="store_true", help="also profile the compiled step's kernels (a minute to compile)"
    )
    args = p.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (200 if device.type == "cuda" else 10)
    dtype = torch.bfloat16
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# Speed levers on {name}, torch {torch.__version__}, batch {args.batch_size}, bf16 autocast\n")
    print("| branches | variant | ms (forward + backward of stage 3) |\n|---|---|---|")
    for n in (2, 4):
        for variant, ms in branches(n, args.batch_size, device, dtype, steps).items():
            print(f"| {n} | {variant} | {ms:.3f} |", flush=True)
    print("\n| stem input | ms (forward + backward) |\n|---|---|")
    for variant, ms in stem(args.batch_size, device, dtype, steps).items():
        print(f"| {variant} | {ms:.3f} |", flush=True)
    if device.type == "cuda":
        kernels(args.batch_size, device, (None, "default") if args.compiled_kernels else (None,))


if __name__ == "__main__":
    main()
