"""How close the CPU training step is to what the CPU can compute: a roofline for `ffl bench`.

Counts the floating-point work of one FFL training step (torch.utils.flop_counter: forward and
backward convolutions and matmuls), measures the machine's dense GEMM throughput in fp32 and bf16
(the ceiling any convolution kernel can reach), and times the step of the project (bf16,
channels_last) and of the reference's model arithmetic (fp32, NCHW) with their convolution share
(torch.profiler). Library only: ``python benchmarks/cpu_roofline.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffl.bench import machine, project
from ffl.data import Augment, DeviceLoader
from ffl.data.cifar import CIFAR100_MEAN, CIFAR100_STD
from ffl.engine import TrainConfig, Trainer
from ffl.methods import FFL
from ffl.reference_loop import random_cifar


def gemm_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def step_gflop(archs, batch: int) -> float:
    method = FFL(archs, 100)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
    with FlopCounterMode(display=False) as counter:
        out = method(x)
        sum(method.loss(out, y, 100).values()).backward()
    return counter.get_total_flops() / 1e9


def conv_share(archs, batch: int, precision: str, channels_last: bool, steps: int = 3) -> float:
    data = random_cifar(batch * steps, 100)
    loader = DeviceLoader(
        data, batch, CIFAR100_MEAN, CIFAR100_STD, augment=Augment(), drop_last=True, channels_last=channels_last
    )
    trainer = Trainer(FFL(archs, 100), loader, TrainConfig(precision=precision))
    trainer.train_epoch(100)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_epoch(100)
    stats = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    conv = sum(v for k, v in stats.items() if k in ("aten::mkldnn_convolution", "aten::convolution_backward"))
    return conv / sum(stats.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet32")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    archs, b, cpu = [args.arch] * 2, args.batch_size, torch.device("cpu")
    work = step_gflop(archs, b)
    peak = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    print(f"# CPU roofline on {machine(cpu)}\n")
    print(f"One training step ({args.arch} x2 FFL, batch {b}): {work:.1f} GFLOP")
    print(f"Dense GEMM ceiling: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s\n")
    print("| path | ms/step | GFLOP/s | of its GEMM ceiling | convolution share of the step |\n|---|---|---|---|---|")
    steps = {}
    for label, precision, cl in (
        ("fp32, NCHW (the reference's arithmetic)", "fp32", False),
        ("bf16, channels_last (project)", "bf16", True),
    ):
        r = project(archs, 100, b, cpu, args.steps, 2, precision=precision, channels_last=cl, cuda_graph=False)
        rate = work / (r.step_ms / 1000)
        share = conv_share(archs, b, precision, cl)
        print(f"| {label} | {r.step_ms:.0f} | {rate:.0f} | {rate / peak[precision]:.0%} | {share:.0%} |", flush=True)
        steps[precision] = (r.step_ms, share)
    (ref_ms, _), (ms, share) = steps["fp32"], steps["bf16"]
    print(
        f"\nThe project's convolutions alone take {ms * share:.0f} ms/step; 3x the fp32 step needs "
        f"{ref_ms / 3:.0f} ms/step for everything."
    )


if __name__ == "__main__":
    main()
