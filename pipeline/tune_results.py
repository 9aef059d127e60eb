"""A finished search's results for people: the trials' table, the best params (as a params file
and as `-S` overrides), the summary (which split scored the trials), and Optuna's pictures."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import yaml

from ffl import atomic
from ffl.config_diff import differences, flatten
from ffl.errors import one_line
from pipeline.errors import TrainingFailed
from pipeline.params import Params, tune_metric
from pipeline.trials import CLOCK, apply_config, distributions, trial_raw

TUNE_DIR = Path("tune")


def trial_rows(results, params: Params) -> list[dict]:
    t = params.tune
    rows = []
    epochs = t.epochs or params.train.epochs
    for i, r in enumerate(results):
        metrics = r.metrics or {}
        done = metrics.get(CLOCK, 0)
        if "diverged" in metrics:
            status = f"failed: {metrics['diverged']}"
        elif r.error is not None:
            status = f"failed: {one_line(r.error)[:300]}"
        else:
            status = "completed" if done >= epochs else "stopped early"
        row = {
            "trial": i,
            "trial_id": metrics.get("trial_id", r.path.rsplit("/", 1)[-1] if r.path else ""),
            "status": status,
            "epochs": done,
            "score": metrics.get(tune_metric(params), float("nan")),
            "node": metrics.get("node", ""),
        }
        row |= {k: (r.config or {}).get(k) for k in t.dimensions(params.method.name)}
        row |= {k: v for k, v in metrics.items() if k.startswith(("val/", "train/loss/total"))}
        rows.append(row)
    return rows


def changed_params(base: dict, ran: dict) -> dict[str, str]:
    """``{dotted key: value}`` for every param of ``ran`` that ``base`` (the params file the search
    started from) does not hold, values written as `dvc exp run -S` and `ffl train -S` both parse
    them (JSON: quoted strings, lists without spaces, so that `$(cat ...)` splits them whole)."""
    now = flatten(ran)
    return {
        key: json.dumps(now[key], separators=(",", ":"))
        for key, _, _ in differences(base, ran, exact_types=True)
        if key in now and not key.startswith("tune.")
    }


def search_identity(params: Params) -> str:
    """What a search ran, as a short digest that its summary.json carries: a search whose summary
    carries the digest of the params it would run now is done (``ffl tune --preset TABLE``)."""
    text = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def budget(params: Params) -> dict:
    """A search's budget, as its summary records it: what makes two searches equal."""
    t = params.tune
    return {
        "trials": t.trials,
        "time_bound_min": t.time_budget_min,
        "trial_epochs": t.epochs or params.train.epochs,
        "scheduler": t.scheduler.model_dump(mode="json"),
        "sampler": t.sampler,
        "sampler_seed": t.seed,
        "concurrent": t.max_concurrent or "as the resources allow",
        "resources": t.resources.model_dump(mode="json"),
    }


def scored_on(data) -> dict:
    """What the trials were scored on, said in every result: the validation split, never the test split."""
    n = len(data.splits["val"]) if "val" in data.splits else 0
    return {"split": "val", "images": n, "note": "the held-out validation split; the test split is not seen"}


def write_results(
    results,
    params: Params,
    raw: dict,
    out: Path = TUNE_DIR,
    base: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """tune/ (or ``out``): trials.csv, summary.json (with ``extra``: what the trials were scored on,
    the wall time, why the search stopped), best_params.yaml, best_overrides.txt and the plots."""
    import csv
    import io

    t = params.tune
    rows = trial_rows(results, params)
    scored = [r for r in rows if not r["status"].startswith("failed") and math.isfinite(r["score"])]
    if not scored:
        # Nothing to rank: tune/ keeps the last search's results, a set that agrees with itself.
        reasons = sorted({r["status"] for r in rows})
        raise TrainingFailed(
            f"none of the {len(rows)} trials finished with a score ({'; '.join(reasons)[:300]}); "
            f"{out} keeps the results of the last search that did"
        )
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    summary = {
        "trials": len(rows),
        "completed": sum(r["status"] == "completed" for r in rows),
        "stopped_early": sum(r["status"] == "stopped early" for r in rows),
        "failed": sum(r["status"].startswith("failed") for r in rows),
    }
    best = min(scored, key=lambda r: r["score"])
    best_config = {k: best[k] for k in t.dimensions(params.method.name)}
    metric = tune_metric(params)
    summary |= {"best_trial": best["trial"], "best": {metric: best["score"]}, "best_params": best_config}
    summary |= extra or {}
    ran = apply_config(trial_raw(params, raw), best_config)  # exactly what the best trial trained
    pairs = changed_params(base if base is not None else raw, ran)
    best_params = (
        f"# What the best of {len(rows)} trials ran ({metric} = {best['score']:.4f}, on the validation split): "
        f"`ffl train -p {out}/best_params.yaml`.\n"
        f"# train.epochs is the trials' length (tune.epochs); the same as -S pairs: {out}/best_overrides.txt\n"
        + yaml.safe_dump(ran | {"tune": raw.get("tune", {})}, sort_keys=False)
    )
    # One search's results: all of them replaced, or (a full disk) none.
    atomic.write_together(
        {
            out / "trials.csv": table.getvalue().encode(),
            out / "best_params.yaml": best_params.encode(),
            out / "best_overrides.txt": (" ".join(f"-S {k}={v}" for k, v in pairs.items()) + "\n").encode(),
            out / "summary.json": (json.dumps(summary, indent=2) + "\n").encode(),
        }
    )
    write_plots(rows, params, out / "plots")
    return summary


def write_plots(rows: list[dict], params: Params, out: Path) -> None:
    """Optuna's history and importance plots, from a study rebuilt from the finished trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    dists = distributions(params)
    for r in rows:
        if any(r[k] is None for k in dists):
            continue  # stopped by the time budget before it was given its values
        ok = not r["status"].startswith("failed") and math.isfinite(r["score"])
        study.add_trial(
            optuna.trial.create_trial(
                params={k: r[k] for k in dists},
                distributions=dists,
                value=r["score"] if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    draw(study, "optimization_history", tune_metric(params), out)
    complete = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    why = None
    if len(complete) >= 2:
        try:
            draw(study, "param_importances", tune_metric(params), out)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's notes on ties, as when drawing
                importances = optuna.importance.get_param_importances(study)
            atomic.write_text(out / "importances.json", json.dumps(importances, indent=2) + "\n")
        except (ValueError, RuntimeError) as e:  # e.g. every trial sampled the same values
            why = str(e)
    else:
        why = f"{len(complete)} trial(s) scored; importances need at least 2"
    if why:
        atomic.write_text(out / "param_importances.txt", f"not computed: {why}\n")


def draw(study, plot: str, metric: str, out: Path) -> None:
    """One of Optuna's plots twice: a PNG (Optuna's matplotlib backend) for pages and reviews, and
    the interactive HTML, which loads plotly.js from its CDN instead of embedding its 4.8 MB, so
    that the results stay small enough to version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization as vis

    # Optuna's notes while drawing (experimental API; "importances will be equal" when trials
    # tie) are about the picture, which shows it; not lines for the person running the search.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Target and region quantiles")
        ax = getattr(vis.matplotlib, f"plot_{plot}")(study, target_name=metric)
        fig = ax.figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        fig.savefig(out / f"{plot}.png", dpi=100)
        plt.close(fig)
        html = getattr(vis, f"plot_{plot}")(study, target_name=metric)
    html.write_html(out / f"{plot}.html", include_plotlyjs="cdn")
