"""`ffl report`: a table of the paper beside the runs that reproduce it, or a table of our own
(no paper numbers) with every row beside the table's ``compare`` row.

The runs are DVC experiments, wherever they came from (`ffl reproduce`, `dvc exp run --queue`, a
`dvc exp save`): an experiment belongs to a row when it ran the row's params, seed aside, by the
rule a resumed run uses to recognise its checkpoint (``pipeline.run.run_identity``: the device,
the CUDA graph switch and the decoding workers do not count). Per row and metric: mean +- std over
seeds, the number of seeds, the paper's number and the difference; a row with no run says so. A
row without the paper's numbers reports the table's ``metrics`` (its deployed classifier, its
sub-network mean) and their difference from the ``compare`` row's deployed classifier, with
whether that difference is beyond the seeds' spread: larger than twice its standard error,
sqrt(s_a^2/n_a + s_b^2/n_b), from the two rows' sample std over seeds.
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
from pathlib import Path

from ffl import atomic
from pipeline.errors import UserError
from pipeline.experiments import experiments, keep_runs
from pipeline.params import read_yaml, validate
from pipeline.run import run_identity
from pipeline.tables import Table, resolve_metric, row_metrics, row_raw

REPORTS = Path("reports")


def metric(metrics: dict, key: str) -> float | None:
    node = metrics.get("test", {})
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, (int, float)) else None


def summarise(table: Table, runs: list[dict], overrides: list[str] = ()) -> list[dict]:
    """One entry per (row, metric): ours over seeds, the runs used, and the paper's number or the
    comparison with the table's ``compare`` row."""
    ids = [(run_identity(r["params"], seed=False), r) for r in runs]
    out = []
    deployed: dict[str, dict[str, str]] = {}  # row -> kind -> its deployed metric
    for row_name, row in table.rows.items():
        raw = row_raw(table, row_name, overrides)
        params = validate(raw)
        want = run_identity(raw, seed=False)
        deployed[row_name] = {k: resolve_metric(f"{k}.deployed", params) for k in ("top1_err", "top5_err")}
        # One run per seed: the newest (dvc exp show lists HEAD's experiments first, then older
        # commits', each commit's newest first).
        by_seed: dict = {}
        for i, r in ids:
            if i is not None and i == want:
                by_seed.setdefault(r["params"].get("seed"), r)
        matched = [by_seed[s] for s in sorted(by_seed, key=lambda s: (s is None, s))]
        for key in row_metrics(table, row_name, params):
            paper = row.paper.get(key)
            values = [(r["params"].get("seed"), metric(r["metrics"], key)) for r in matched]
            values = [(s, v) for s, v in values if v is not None]
            ours = [v for _, v in values]
            mean = statistics.fmean(ours) if ours else None
            out.append(
                {
                    "row": row_name,
                    "method": params.method.name,
                    "metric": key,
                    "deployed": key == deployed[row_name][key.partition(".")[0]],
                    "paper": paper,
                    "mean": mean,
                    "std": statistics.stdev(ours) if len(ours) > 1 else None,
                    "values": ours,
                    "seeds": [s for s, _ in values],
                    "runs": [r["name"] for r in matched],
                    "difference": None if mean is None or paper is None else mean - paper,
                }
            )
    if table.compare is not None:
        for e in out:
            base_key = deployed[table.compare][e["metric"].partition(".")[0]]
            base = next((b for b in out if b["row"] == table.compare and b["metric"] == base_key), None)
            e.update(compare_with(e, base) if base is not None and e is not base else {})
    return out


def difference(a: dict, b: dict) -> dict:
    """``a`` minus ``b`` (two entries of one metric, over seeds) as ``diff``; beyond the seeds' spread
    when larger than twice the standard error of the difference of the two means (``margin``)."""
    if a["mean"] is None or b["mean"] is None:
        return {}
    out = {"diff": a["mean"] - b["mean"]}
    x, y = a["values"], b["values"]
    if len(x) > 1 and len(y) > 1:
        margin = 2 * math.sqrt(statistics.variance(x) / len(x) + statistics.variance(y) / len(y))
        out |= {"margin": margin, "beyond_spread": abs(out["diff"]) > margin}
    return out


def compare_with(entry: dict, base: dict) -> dict:
    """``entry`` minus the ``base`` row's deployed classifier (``difference``, as ``vs_baseline``)."""
    out = {"baseline": {"row": base["row"], "metric": base["metric"], "mean": base["mean"], "std": base["std"]}}
    diff = difference(entry, base)
    if "diff" in diff:
        out["vs_baseline"] = diff.pop("diff")
    return out | diff


def markdown(name: str, table: Table, entries: list[dict]) -> str:
    if table.compare is not None and all(e["paper"] is None for e in entries):
        return own_markdown(name, table, entries)
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
        paper = "" if e["paper"] is None else f"{e['paper']:.2f}"
        diff = "" if e["difference"] is None else f"{e['difference']:+.2f}"
        lines.append(f"| {e['row']} | {e['metric']} | {paper} | {ours(e)} | {len(e['seeds'])} | {diff} |")
    return "\n".join(lines) + "\n"


def ours(e: dict) -> str:
    if e["mean"] is None:
        return "no runs yet"
    return f"{e['mean']:.2f}" + (f" +- {e['std']:.2f}" if e["std"] is not None else "")


def own_markdown(name: str, table: Table, entries: list[dict]) -> str:
    """A table without the paper's numbers: every row against the ``compare`` row."""
    base = next((e["baseline"] for e in entries if "baseline" in e), None)
    against = f"{table.compare} ({base['metric']})" if base else table.compare
    lines = [
        f"# {table.title}",
        "",
        f"`ffl report {name}`: DVC experiments whose params are the row's (seed aside); top-1 error in %, mean +-"
        f' sample std over seeds. No paper numbers: each row against {against}. "beyond spread": the'
        " difference is larger than twice its standard error (sqrt(s_a^2/n_a + s_b^2/n_b)).",
        "",
        f"![{name}: every row against {table.compare}]({name}.png)",
        "",
        f"| row | classifier | ours | seeds | vs {table.compare} | 2 x s.e. | beyond spread |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        clf = e["metric"].partition(".")[2] + (" (deployed)" if e["deployed"] else "")
        diff = f"{e['vs_baseline']:+.2f}" if "vs_baseline" in e else ""
        margin = f"{e['margin']:.2f}" if "margin" in e else ""
        beyond = {True: "yes", False: "no"}.get(e.get("beyond_spread"), "")
        lines.append(f"| {e['row']} | {clf} | {ours(e)} | {len(e['seeds'])} | {diff} | {margin} | {beyond} |")
    return "\n".join(lines) + "\n"


def picture(table: Table, entries: list[dict]) -> bytes:
    """Ours (mean, error bar: std) against the paper's number, or against the ``compare`` row's
    deployed classifier (its mean and std as a band), one line per row and metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{e['row']}  {e['metric']}" for e in entries]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(entries) + 1.2))
    y = range(len(entries))
    with_paper = [(i, e) for i, e in enumerate(entries) if e["paper"] is not None]
    if with_paper:
        ax.scatter([e["paper"] for _, e in with_paper], [i for i, _ in with_paper], marker="x", color="black",
                   label="paper", zorder=3)  # fmt: skip
    base = next((e["baseline"] for e in entries if e.get("baseline", {}).get("mean") is not None), None)
    if base is not None:
        ax.axvline(base["mean"], color="grey", lw=1, label=f"{base['row']} {base['metric']} (mean, +- std)")
        if base["std"]:
            ax.axvspan(base["mean"] - base["std"], base["mean"] + base["std"], color="grey", alpha=0.15)
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
    anchor = base["mean"] if base is not None and base["mean"] is not None else 0.0
    for i, e in enumerate(entries):
        if e["mean"] is None:
            x = e["paper"] if e["paper"] is not None else anchor
            ax.annotate("no runs yet", (x, i), textcoords="offset points", xytext=(8, -3), fontsize=8)
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


def used(found: list[dict], entries: list[dict]) -> list[dict]:
    """The runs of ``found`` that ``entries`` were made from."""
    names = {run for e in entries for run in e.get("runs") or ()}
    return [r for r in found if r["name"] in names]


def runs_in(entries: list[dict]) -> int:
    """How many runs a report was made from (each run once, whatever number of metrics it gives)."""
    return len({(e["row"], run) for e in entries for run in e.get("runs") or ()})


def check_not_less(path: Path, entries: list[dict]) -> None:
    """A report is evidence: one made from fewer runs than the report at ``path`` (a fresh clone, which
    has none of the DVC experiments of the machine that ran them) does not replace it."""
    try:
        before = runs_in(json.loads(path.read_text())["rows"])
    except (OSError, ValueError, KeyError, TypeError):  # none there, or unreadable: nothing to keep
        return
    now = runs_in(entries)
    if now < before:
        raise UserError(
            f"{path}: made from {before} runs, and this report finds {now} (DVC experiments stay in the repository "
            f"that ran them: `dvc exp pull <remote>` brings them here); --force replaces it"
        )


def report(
    name: str, table: Table, overrides: list[str] = (), out: Path = REPORTS, force: bool = False
) -> tuple[Path, list[dict]]:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is not a folder; the reports are written into one")
    found = experiments()
    entries = summarise(table, found, overrides)
    if not force:
        check_not_less(out / f"{name}.json", entries)
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in e.items()} for e in entries]
    atomic.write_together(
        {
            out / f"{name}.json": (json.dumps({"title": table.title, "rows": clean}, indent=2) + "\n").encode(),
            out / f"{name}.png": picture(table, entries),
            out / f"{name}.md": markdown(name, table, entries).encode(),
        }
        | keep_runs(used(found, entries))
    )
    return out / f"{name}.md", entries


def merged(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, section by section."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def show_experiments(all_commits: bool, echo) -> None:
    """``ffl exps``: ``compact_rows`` as a table that fits 120 columns."""
    from rich.console import Console
    from rich.table import Table as RichTable

    rows = compact_rows(experiments(all_commits))
    if not rows:
        echo("no experiments yet (`dvc exp run`, `ffl reproduce`)" + ("" if all_commits else "; --all: other commits'"))
        return
    table = RichTable("experiment", "method", "networks", "seed", "deployed top-1 %", "sub mean %", box=None)
    table.columns[0].overflow = "fold"
    for row in rows:
        table.add_row(*row)
    Console(width=120).print(table)


def compact_rows(found: list[dict]) -> list[list[str]]:
    """``ffl exps``: one short row an experiment: name, method, networks, seed, the deployed
    classifier's top-1 test error and the sub-networks' mean (what tells runs apart)."""
    rows = []
    for exp in found:
        raw = exp["params"]
        try:
            p = validate(raw)
        except UserError:
            p = None
        if p is None and Path("params.yaml").is_file():
            # An experiment of an earlier version lacks the keys added since: today's values stand
            # in for them (for this view only; `ffl report` matches runs by their own params).
            try:
                p = validate(merged(read_yaml("params.yaml"), raw))
            except UserError:
                p = None
        if p is None:  # shown as far as it goes
            method = str((raw.get("method") or {}).get("name", "?"))
            rows.append([exp["name"], method, "?", str(raw.get("seed", "?")), "?", "?"])
            continue
        clf = p.method_class.deployed(len(p.archs()), p.settings())
        deployed, mean = metric(exp["metrics"], f"top1_err.{clf}"), metric(exp["metrics"], "top1_err.sub_mean")
        rows.append(
            [
                exp["name"],
                p.method.name,
                "+".join(p.archs()),
                str(p.seed),
                f"{clf} {deployed:.2f}" if deployed is not None else f"{clf} ?",
                f"{mean:.2f}" if mean is not None else "",
            ]
        )
    return rows
