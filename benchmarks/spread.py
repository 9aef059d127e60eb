"""How much does a run's result move with the seed? Test errors of `ffl train` over several seeds.

Runs the pipeline's own stages (prepare once, then train + evaluate per seed) in a scratch
directory with params.yaml plus the given overrides, and prints mean, std, min and max of every
classifier's top-1 test error. This is how the README's "what spread to expect" was measured:

    python benchmarks/spread.py --seeds 0 1 2 3 4
    python benchmarks/spread.py --seeds 0 1 2 3 4 -S data.shapes.train_per_class=1000 -S train.epochs=8

``--jsonl FILE`` appends one line per run (overrides, seed, errors, seconds), so a long
comparison can be interrupted and read back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.params import load_params  # noqa: E402
from pipeline.stages.evaluate import evaluate  # noqa: E402
from pipeline.stages.prepare import prepare  # noqa: E402
from pipeline.stages.train import train  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="params override")
    ap.add_argument("-p", "--params", type=Path, default=ROOT / "params.yaml", help="params file")
    ap.add_argument("--jsonl", type=Path, help="append one JSON line per run here")
    args = ap.parse_args(argv)

    params_file = args.params.resolve()
    jsonl = args.jsonl.resolve() if args.jsonl else None
    runs = []
    with tempfile.TemporaryDirectory(prefix="ffl-spread-") as tmp:
        os.chdir(tmp)
        prepare(load_params(params_file, args.overrides))
        for seed in args.seeds:
            params = load_params(params_file, [*args.overrides, f"seed={seed}"])
            start = time.perf_counter()
            train(params, fresh=True, progress=False)
            errors = evaluate(params)["test"]["top1_err"]
            live = json.loads(Path("dvclive/metrics.json").read_text())
            run = {"overrides": args.overrides, "seed": seed, "top1_err": errors}
            # The last epoch's training and validation errors: is the spread under- or overfitting?
            run["last_epoch"] = {s: live.get(s, {}).get("top1_err", {}).get("fused") for s in ("train", "val")}
            run["seconds"] = round(time.perf_counter() - start, 1)
            runs.append(run)
            print(json.dumps(run), flush=True)
            if jsonl:
                with jsonl.open("a") as f:
                    f.write(json.dumps(run) + "\n")

    print(f"\n{' '.join(args.overrides) or 'params.yaml'}, seeds {args.seeds}: top-1 test error (%)")
    print(f"{'classifier':<10} {'mean':>6} {'std':>5} {'min':>6} {'max':>6}")
    for name in runs[0]["top1_err"]:
        values = [r["top1_err"][name] for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{name:<10} {statistics.mean(values):6.2f} {std:5.2f} {min(values):6.2f} {max(values):6.2f}")


if __name__ == "__main__":
    main()
