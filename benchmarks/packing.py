"""Several training runs packed onto one GPU: aggregate images/s of 1, 2, 4, 8 concurrent runs.

Small CIFAR networks leave most of a large GPU idle; reproducing a table runs many of them, so
the question is how many to put on one GPU. Each run is its own process (as reproduction and tune
trials are) timing the project's default step (whole-step CUDA graph, bf16) on random CIFAR-sized
data, as `ffl bench` does; the processes start their timed window together (a barrier).
``python benchmarks/packing.py --counts 1 2 4 8 --steps 1000``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(barrier, queue, arch, steps, batch_size):
    import torch

    from ffl.bench import project

    device = torch.device("cuda")
    project([arch, arch], 100, batch_size, device, steps=20, warmup=5)  # capture, cuDNN, allocator
    barrier.wait()
    r = project([arch, arch], 100, batch_size, device, steps=steps, warmup=5)
    queue.put(r.images_per_s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent runs per measurement")
    p.add_argument("--arch", default="resnet32", help="every run: FFL over two branches of this")
    p.add_argument("--steps", type=int, default=1000, help="timed steps per run")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = []
    for n in args.counts:
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [
            ctx.Process(target=worker, args=(barrier, queue, args.arch, args.steps, args.batch_size)) for _ in range(n)
        ]
        for proc in procs:
            proc.start()
        rates = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        rows.append({"runs": n, "aggregate_img_s": sum(rates), "per_run_img_s": sum(rates) / n})
        print(f"{n} runs: {sum(rates):.0f} img/s in all, {sum(rates) / n:.0f} per run", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
