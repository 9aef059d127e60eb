"""`ffl report`: a table of the paper beside the runs that reproduce it.

The runs are DVC experiments, wherever they came from (`ffl reproduce`, `dvc exp run --queue`, a
`dvc exp save`): an experiment belongs to a row when it ran the row's params, seed aside, by the
rule a resumed run uses to recognise its checkpoint (``pipeline.stages.run_config``: the device,
the CUDA graph switch and the decoding workers do not count). Per row and metric: mean +- std over
seeds, the number of seeds, the paper's number and the difference; a row with no run says so.
Written to reports/<table>.md (with the picture), reports/<table>.json and reports/<table>.png.

Not a DVC stage: a stage runs under `dvc repro`'s repository lock and cannot list the experiments,
and its output would depend on refs no dvc.yaml dependency can name. The files are plain files
that git versions (like tune/), and `dvc exp save` records them where wanted.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from ffl.checkpoint import atomic_write_bytes, atomic_write_text
from pipeline.errors import UserError
from pipeline.params import validate
from pipeline.reproduce import Table, row_raw

REPORTS = Path("reports")


def experiments() -> list[dict]:
    """``[{"name", "params": raw params, "metrics": metrics/test.json}]`` of every DVC experiment of
    every commit (`dvc exp show --json --all-commits`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"], capture_output=True, text=True
    )
    if proc.returncode:
        raise UserError(f"dvc exp show: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
    found = []
    for baseline in json.loads(proc.stdout or "[]"):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = (data.get("params") or {}).get("params.yaml", {}).get("data")
                metrics = (data.get("metrics") or {}).get("metrics/test.json", {}).get("data")
                if params and metrics:
                    found.append({"name": rev.get("name") or rev.get("rev"), "params": params, "metrics": metrics})
    return found


def identity(raw: dict) -> dict | None:
    """What makes two runs the same row: their run config without the seed (None if invalid)."""
    from pipeline.stages import run_config

    try:
        cfg = run_config(validate(raw))
    except UserError:
        return None
    cfg.pop("seed")
    return cfg


def metric(metrics: dict, key: str) -> float | None:
    node = metrics.get("test", {})
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, (int, float)) else None


def summarise(table: Table, runs: list[dict], overrides: list[str] = ()) -> list[dict]:
    """One entry per (row, metric): the paper's number, ours over seeds, and the runs used."""
    ids = [(identity(r["params"]), r) for r in runs]
    out = []
    for row_name, row in table.rows.items():
        want = identity(row_raw(table, row_name, overrides))
        # One run per seed: the newest (dvc exp show lists HEAD's experiments first, then older
        # commits', each commit's newest first).
        by_seed: dict = {}
        for i, r in ids:
            if i is not None and i == want:
                by_seed.setdefault(r["params"].get("seed"), r)
        matched = [by_seed[s] for s in sorted(by_seed, key=lambda s: (s is None, s))]
        for key, paper in row.paper.items():
            values = [(r["params"].get("seed"), metric(r["metrics"], key)) for r in matched]
            values = [(s, v) for s, v in values if v is not None]
            ours = [v for _, v in values]
            mean = statistics.fmean(ours) if ours else None
            out.append(
                {
                    "row": row_name,
                    "metric": key,
                    "paper": paper,
                    "mean": mean,
                    "std": statistics.stdev(ours) if len(ours) > 1 else None,
                    "seeds": [s for s, _ in values],
                    "runs": [r["name"] for r in matched],
                    "difference": None if mean is None else mean - paper,
                }
            )
    return out


def markdown(name: str, table: Table, entries: list[dict]) -> str:
    lines = [
        f"# {table.title}",
        "",
        f"`ffl report {name}`: DVC experiments whose params are the row's (seed aside); top-1/top-5 error in %,"
        " mean +- sample std over seeds. The paper's numbers are the poster's.",
        "",
        f"![{name}: ours against the paper]({name}.png)",
        "",
        "| row | metric | paper | ours | seeds | ours - paper |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        if e["mean"] is None:
            ours, diff = "no runs yet", ""
        else:
            std = f" +- {e['std']:.2f}" if e["std"] is not None else ""
            ours, diff = f"{e['mean']:.2f}{std}", f"{e['difference']:+.2f}"
        lines.append(f"| {e['row']} | {e['metric']} | {e['paper']:.2f} | {ours} | {len(e['seeds'])} | {diff} |")
    return "\n".join(lines) + "\n"


def picture(table: Table, entries: list[dict]) -> bytes:
    """Ours (mean, error bar: std) against the paper's number, one line per row and metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{e['row']}  {e['metric']}" for e in entries]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(entries) + 1.2))
    y = range(len(entries))
    ax.scatter([e["paper"] for e in entries], y, marker="x", color="black", label="paper", zorder=3)
    have = [(i, e) for i, e in enumerate(entries) if e["mean"] is not None]
    ax.errorbar(
        [e["mean"] for _, e in have],
        [i for i, _ in have],
        xerr=[e["std"] or 0 for _, e in have],
        fmt="o",
        color="tab:blue",
        capsize=3,
        label="ours (mean +- std over seeds)",
    )
    for i, e in enumerate(entries):
        if e["mean"] is None:
            ax.annotate("no runs yet", (e["paper"], i), textcoords="offset points", xytext=(8, -3), fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("error (%)")
    ax.set_title(table.title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


def report(name: str, table: Table, overrides: list[str] = (), out: Path = REPORTS) -> tuple[Path, list[dict]]:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is not a folder; the reports are written into one")
    entries = summarise(table, experiments(), overrides)
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in e.items()} for e in entries]
    atomic_write_text(out / f"{name}.json", json.dumps({"title": table.title, "rows": clean}, indent=2) + "\n")
    atomic_write_bytes(out / f"{name}.png", picture(table, entries))
    atomic_write_text(out / f"{name}.md", markdown(name, table, entries))
    return out / f"{name}.md", entries
