"""Does the fast path cost accuracy? Final fused test error on the embedded default, fast vs plain.

Fast: the project's defaults (precision auto, channels_last, the whole step as one CUDA graph on
GPUs). Plain: fp32, NCHW, eager. Several seeds each; prints mean, std and every run. Library only
(no DVC, Ray or pydantic), so it runs on any machine with torch:
``python benchmarks/accuracy.py --seeds 0 1 2 --device cuda``. The dataset, model and schedule
are read from params.yaml so the comparison is on what `make repro` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffl import FFL, Augment, DeviceLoader, TrainConfig, Trainer, evaluate, make_shapes
from ffl.precision import resolve_precision


def run(
    p: dict, data, seed: int, device, precision: str, channels_last: bool, compile: str | None, graph: bool
) -> float:
    torch.manual_seed(seed)
    m, t = p["method"], p["train"]
    f = m["ffl"]
    method = FFL([p["model"]["arch"]] * 2, data.num_classes, settings=f)
    a = p["data"]["augment"]
    train = DeviceLoader(
        data.splits["train"],
        t["batch_size"],
        data.mean,
        data.std,
        device,
        augment=Augment(a["pad"], a["pad_mode"], a["flip"]),
        shuffle=True,
        drop_last=True,
        seed=seed,
        channels_last=channels_last,
    )
    milestones = [round(f * t["epochs"]) for f in t["milestones"]]
    cfg = TrainConfig(
        epochs=t["epochs"],
        lr=t["lr"],
        weight_decay=t["weight_decay"],
        milestones=milestones,
        precision=precision,
        compile=compile,
        cuda_graph=graph,
    )
    trainer = Trainer(method, train, cfg)
    trainer.fit()
    test = DeviceLoader(data.splits["test"], 1000, data.mean, data.std, device, channels_last=channels_last)
    return evaluate(method, test, trainer.precision)["fused"]["top1_err"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", help="torch.compile mode of the fast path (default: fused kernels in the step graph)")
    ap.add_argument("--no-graph", action="store_true", help="fast path without the whole-step CUDA graph")
    ap.add_argument("--fast-precision", default="auto", help="the fast path's precision (fp32 isolates bf16's share)")
    ap.add_argument("--json")
    args = ap.parse_args()
    p = yaml.safe_load(Path(args.params).read_text())
    s = p["data"]["shapes"]
    data = make_shapes(
        s["train_per_class"], s["test_per_class"], p["data"]["val_fraction"], s["noise"], p["data"]["seed"]
    )
    device = torch.device(args.device)
    fast_precision = resolve_precision(args.fast_precision, device)
    graph = device.type == "cuda" and not args.no_graph
    fast = f"fast ({fast_precision}, channels_last{', step graph' if graph else ''}"
    fast += f"{', compile ' + args.compile if args.compile else ''})"
    paths = {
        fast: (fast_precision, True, args.compile, graph),
        "plain (fp32, NCHW, eager)": ("fp32", False, None, False),
    }
    results = {}
    for label, (precision, cl, compile, g) in paths.items():
        errs = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            errs.append(run(p, data, seed, device, precision, cl, compile, g))
            print(
                f"{label} seed {seed}: fused top-1 error {errs[-1]:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True
            )
        results[label] = errs
    print(f"\n| path | fused top-1 error (mean ± std over seeds {args.seeds}) | runs |\n|---|---|---|")
    for label, errs in results.items():
        sd = statistics.stdev(errs) if len(errs) > 1 else 0.0
        print(f"| {label} | {statistics.mean(errs):.2f} ± {sd:.2f} | {', '.join(f'{e:.2f}' for e in errs)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "results": results}, indent=2))


if __name__ == "__main__":
    main()
