"""DDP on a GPU: do N processes train the one-process model? NCCL first, then gloo on CUDA tensors.

The project's rule (ffl/distributed.py): N processes split every global batch into contiguous
parts and DDP averages their gradients, so they train the one-process model except for batch
norm, whose statistics each rank computes over its own part. This check trains FFL on random
CIFAR-sized data in one process, with ``per_rank_batch_norm`` giving each rank's part its own
statistics, and in N processes under DDP, and compares every weight.

NCCL gives one GPU to each rank: two ranks on one GPU are refused (NCCL reports a duplicate GPU),
which is what this script records when the machine has fewer GPUs than processes. gloo runs on
CUDA tensors too (through host memory), so the same check runs the DDP code path on the GPU.

``python benchmarks/ddp_check.py --processes 2 --backends nccl gloo --json ddp.json``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffl.data import Augment, DeviceLoader, Split
from ffl.distributed import Ranks, per_rank_batch_norm
from ffl.engine import TrainConfig, Trainer
from ffl.methods import FFL

BATCH = 64


def _exact(device: torch.device) -> None:
    # Comparable arithmetic in every process: no TF32, deterministic cuDNN kernels.
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def _train(device: torch.device, steps: int, ranks: Ranks, world_for_bn: int = 1) -> dict[str, torch.Tensor]:
    _exact(device)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (BATCH * steps, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, BATCH * steps))
    loader = DeviceLoader(
        split, BATCH, (0.5,) * 3, (0.25,) * 3, device, augment=Augment(), shuffle=True, seed=0, ranks=ranks,
        lockstep=True, channels_last=False,
    )  # fmt: skip
    torch.manual_seed(0)
    method = FFL(["resnet8", "resnet8"], 10)
    if world_for_bn > 1:
        per_rank_batch_norm(method, world_for_bn)
    trainer = Trainer(method, loader, TrainConfig(epochs=1, milestones=[], lr=0.05, precision="fp32"))
    trainer.fit()
    return {k: v.detach().cpu() for k, v in method.named_parameters()}


def _rank(rank: int, world: int, backend: str, port: int, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK="0")
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world)
        weights = _train(device, steps, Ranks(rank, world))
        if rank == 0:
            torch.save(weights, out)
    except Exception as e:
        Path(f"{out}.error{rank}").write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(backend: str, world: int, steps: int, reference: dict) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rank0.pt")
        try:
            mp.spawn(_rank, args=(world, backend, _port(), steps, out), nprocs=world, join=True)
        except Exception as e:
            errors = sorted(Path(d).glob("rank0.pt.error*"))
            first = errors[0].read_text().splitlines()[0] if errors else str(e).strip().splitlines()[-1]
            return {"backend": backend, "processes": world, "ran": False, "error": first[:400]}
        ddp = torch.load(out, weights_only=True)
    diff = max((ddp[k] - v).abs().max().item() for k, v in reference.items())
    return {"backend": backend, "processes": world, "ran": True, "max_abs_weight_difference": diff}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["nccl", "gloo"])
    p.add_argument("--steps", type=int, nargs="+", default=[2, 20], help="training steps of each comparison")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"# DDP check on {name} ({torch.cuda.device_count()} GPUs), torch {torch.__version__}\n", flush=True)
    results = []
    for steps in args.steps:
        reference = _train(device, steps, Ranks(), world_for_bn=args.processes)
        torch.manual_seed(0)
        initial = dict(FFL(["resnet8", "resnet8"], 10).named_parameters())
        untrained = max((v - initial[k].detach()).abs().max().item() for k, v in reference.items())
        for backend in args.backends:
            if backend == "nccl" and device.type != "cuda":
                continue
            r = check(backend, args.processes, steps, reference) | {"steps": steps, "weights_moved": untrained}
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
