"""`ffl report TABLE --tuned`: every row at its paper's settings beside the same row at the best
params its own search found (`ffl tune --preset TABLE`, then `ffl reproduce TABLE --tuned`).

A tuned row is the row with its search's best_overrides.txt on top (``tuned_table``), so its runs
are found, compared and reported by the machinery of every other table (``report.summarise``): each
tuned row is compared with tuned vanilla, with the same beyond-the-spread test. Beside that:
tuned minus default per row, how much of each method's gain over vanilla is left once vanilla is
tuned too, both rankings, every row's best params beside its defaults (and which landed on an edge
of the space searched), and Optuna's importances of every row's dimensions as one picture.
Written to reports/<table>-tuned.{md,json,png}.
"""

from __future__ import annotations

import io
import json
import math
import shlex
from pathlib import Path

from ffl import atomic
from ffl.config_diff import flatten
from pipeline.errors import UserError
from pipeline.experiments import experiments, keep_runs
from pipeline.report import REPORTS, check_not_less, difference, ours, summarise, used
from pipeline.tables import Table, row_raw

SEARCHES = Path("tune")
EDGE = 0.02  # a best value within 2% of the searched range (log scale for log dimensions) of a bound


def best_overrides(path: Path) -> list[str]:
    """The ``key=value`` pairs of a search's best_overrides.txt (``-S key=value ...``)."""
    words = shlex.split(path.read_text())
    return [w for w in words if w != "-S"]


def searched_rows(table: Table, name: str, searches: Path = SEARCHES) -> dict[str, Path]:
    """{row: its search's folder} for the rows whose search has finished."""
    folders = {r: searches / name / r for r in table.rows}
    return {r: f for r, f in folders.items() if (f / "best_overrides.txt").is_file() and (f / "summary.json").is_file()}


def tuned_table(table: Table, name: str, rows: list[str], searches: Path = SEARCHES) -> Table:
    """The table whose rows (``rows``) are the rows at their search's best params."""
    found = searched_rows(table, name, searches)
    if missing := [r for r in rows if r not in found]:
        raise UserError(
            f"{name}: no finished search of {', '.join(missing)} in {searches / name}; "
            f"`ffl tune --preset {name}` searches every row"
        )
    tuned = {
        r: table.rows[r].model_copy(
            update={"set": [*table.rows[r].set, *best_overrides(found[r] / "best_overrides.txt")]}
        )
        for r in rows
    }
    return table.model_copy(update={"rows": tuned})


def on_edge(value, dim: dict) -> bool:
    """Whether a best value sits at (or within EDGE of) a bound of the dimension it was drawn from."""
    if dim["type"] == "choice" or value is None:
        return False
    low, high, v = dim["low"], dim["high"], float(value)
    if dim["type"] in ("loguniform", "logint"):
        low, high, v = math.log(low), math.log(high), math.log(max(v, 1e-300))
    if dim["type"] in ("int", "logint") and value in (dim["low"], dim["high"]):
        return True
    return min(v - low, high - v) <= EDGE * (high - low)


def compare_rows(table: Table, name: str, searches: Path, runs: list[dict]) -> dict:
    """Every row's default and tuned deployed results, their comparisons, best params and importances."""
    found = searched_rows(table, name, searches)
    if table.compare not in found:
        raise UserError(f"{name}: the tuned report compares every row with tuned {table.compare}: search it first")
    default = [e for e in summarise(table, runs) if e["deployed"] and e["metric"].startswith("top1_err")]
    tuned = [
        e
        for e in summarise(tuned_table(table, name, list(found), searches), runs)
        if e["deployed"] and e["metric"].startswith("top1_err")
    ]
    by_row = {e["row"]: e for e in tuned}
    base_d = next(e for e in default if e["row"] == table.compare)
    base_t = by_row[table.compare]
    rows = []
    for d in default:
        r = d["row"]
        t = by_row.get(r)
        entry = {"row": r, "method": d["method"], "metric": d["metric"], "default": d, "tuned": t}
        if t is not None:
            summary = json.loads((found[r] / "summary.json").read_text())
            entry["tuned_minus_default"] = difference(t, d)
            entry["vs_tuned_" + table.compare] = difference(t, base_t) if r != table.compare else {}
            entry["vs_default_" + table.compare] = difference(d, base_d) if r != table.compare else {}
            gain_d = (base_d["mean"] - d["mean"]) if None not in (base_d["mean"], d["mean"]) else None
            gain_t = (base_t["mean"] - t["mean"]) if None not in (base_t["mean"], t["mean"]) else None
            entry["gain"] = {"default": gain_d, "tuned": gain_t}
            defaults = flatten(row_raw(table, r))
            space = summary.get("space", {})
            entry["params"] = {
                k: {"default": defaults.get(k), "best": v, "edge": on_edge(v, space[k]) if k in space else None}
                for k, v in summary.get("best_params", {}).items()
            }
            entry["search"] = {k: summary.get(k) for k in ("budget", "wall_s", "ended", "trials", "completed")}
            imp = found[r] / "plots/importances.json"
            entry["importances"] = json.loads(imp.read_text()) if imp.is_file() else {}
        rows.append(entry)
    return {"title": table.title, "compare": table.compare, "rows": rows}


def ranking(rows: list[dict], which: str) -> list[str]:
    have = [e for e in rows if e.get(which) and e[which]["mean"] is not None]
    return [e["row"] for e in sorted(have, key=lambda e: e[which]["mean"])]


def _diff(d: dict) -> str:
    if "diff" not in d:
        return ""
    beyond = {True: ", beyond", False: ""}.get(d.get("beyond_spread"), "")
    return f"{d['diff']:+.2f}" + (f" ({d['margin']:.2f}{beyond})" if "margin" in d else "")


def markdown(name: str, result: dict) -> str:
    base = result["compare"]
    lines = [
        f"# {result['title']}: every row at its best",
        "",
        f"`ffl report {name} --tuned`: each row at its own paper's settings (default) and at the best params its own "
        f"search found (tuned; `ffl tune --preset {name}`, every row with the same budget), top-1 test error of the "
        "deployed classifier in %, mean +- sample std over seeds. Differences with twice their standard error in "
        '(brackets); "beyond": larger than that.',
        "",
        f"![{name}: default and tuned]({name}-tuned.png)",
        "",
        f"| row | classifier | default | tuned | tuned - default | tuned vs tuned {base} | default vs default {base} |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in result["rows"]:
        t = e["tuned"]
        clf = e["metric"].partition(".")[2]
        lines.append(
            f"| {e['row']} | {clf} | {ours(e['default'])} | {ours(t) if t else 'not searched yet'} | "
            f"{_diff(e.get('tuned_minus_default', {}))} | {_diff(e.get('vs_tuned_' + base, {}))} | "
            f"{_diff(e.get('vs_default_' + base, {}))} |"
        )
    lines += ["", f"## Gain over {base}, at the papers' settings and once {base} is tuned too", ""]
    lines += [
        f"| row | gain, default (vs default {base}) | gain, tuned (vs tuned {base}) | left |",
        "|---|---|---|---|",
    ]
    for e in result["rows"]:
        g = e.get("gain")
        if not g or e["row"] == base:
            continue
        d, t = g["default"], g["tuned"]
        left = f"{t / d:.0%}" if d and t is not None and d > 0 else ""
        fmt = lambda v: "" if v is None else f"{v:+.2f}"
        lines.append(f"| {e['row']} | {fmt(d)} | {fmt(t)} | {left} |")
    lines += ["", "## Rankings (best first)", ""]
    lines.append(f"- at the papers' settings: {', '.join(ranking(result['rows'], 'default'))}")
    lines.append(f"- each row tuned: {', '.join(ranking(result['rows'], 'tuned'))}")
    lines += [
        "",
        "## Best params beside the defaults",
        "",
        "| row | param | default | best | on an edge |",
        "|---|---|---|---|---|",
    ]
    for e in result["rows"]:
        for k, p in e.get("params", {}).items():
            best = f"{p['best']:.4g}" if isinstance(p["best"], float) else str(p["best"])
            lines.append(f"| {e['row']} | {k} | {p['default']} | {best} | {'yes' if p['edge'] else ''} |")
    lines += ["", "## The searches", "", "| row | trials | wall (min) | ended by |", "|---|---|---|---|"]
    for e in result["rows"]:
        s = e.get("search")
        if s:
            lines.append(f"| {e['row']} | {s['trials']} | {(s['wall_s'] or 0) / 60:.1f} | {s['ended']} |")
    budgets = {json.dumps(e["search"]["budget"], sort_keys=True) for e in result["rows"] if e.get("search")}
    if len(budgets) == 1:
        lines += ["", f"Every row's budget: `{budgets.pop()}`."]
    elif budgets:
        lines += ["", "**The rows' budgets differ**: see the JSON."]
    return "\n".join(lines) + "\n"


def picture(result: dict) -> bytes:
    """Left: default and tuned error per row. Right: Optuna's importances, rows by dimensions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dims = sorted({k.split(".")[-1] if k.startswith("method.") else k for e in rows for k in e.get("importances", {})})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 2), gridspec_kw={"width_ratios": [1, 1.4]})
    for offset, which, color in ((-0.15, "default", "tab:grey"), (0.15, "tuned", "tab:blue")):
        have = [(i, e[which]) for i, e in enumerate(rows) if e.get(which) and e[which]["mean"] is not None]
        left.errorbar(
            [x["mean"] for _, x in have],
            [i + offset for i, _ in have],
            xerr=[x["std"] or 0 for _, x in have],
            fmt="o",
            color=color,
            capsize=3,
            label=which,
        )
    left.set_yticks(range(len(rows)), [e["row"] for e in rows], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("top-1 test error (%), deployed")
    left.legend(fontsize=8)
    left.grid(axis="x", alpha=0.3)
    grid = [[0.0] * len(dims) for _ in rows]
    for i, e in enumerate(rows):
        for k, v in e.get("importances", {}).items():
            grid[i][dims.index(k.split(".")[-1] if k.startswith("method.") else k)] = v
    image = right.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    right.set_xticks(range(len(dims)), dims, rotation=45, ha="right", fontsize=8)
    right.set_yticks(range(len(rows)), [e["row"] for e in rows], fontsize=8)
    right.set_title("Optuna importance of each searched dimension", fontsize=9)
    fig.colorbar(image, ax=right, fraction=0.03)
    fig.suptitle(result["title"], fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return png.getvalue()


def tuned_report(name: str, table: Table, searches: Path = SEARCHES, out: Path = REPORTS, force: bool = False) -> Path:
    found = experiments()
    result = compare_rows(table, name, searches, found)
    entries = [x for e in result["rows"] for x in (e["default"], e["tuned"]) if x]
    path = out / f"{name}-tuned.json"
    if not force:
        check_not_less(path, entries)
    payload = result | {
        "rows": [e | {"runs": [*e["default"]["runs"], *((e["tuned"] or {}).get("runs") or [])]} for e in result["rows"]]
    }
    atomic.write_together(
        {
            path: (json.dumps(payload, indent=2, default=str) + "\n").encode(),
            out / f"{name}-tuned.png": picture(result),
            out / f"{name}-tuned.md": markdown(name, result).encode(),
        }
        | keep_runs(used(found, entries))
    )
    return out / f"{name}-tuned.md"
