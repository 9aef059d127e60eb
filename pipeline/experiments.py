"""Runs recorded as DVC experiments: the repository checks, what is recorded at HEAD already
(a run is known by its params, not its name), and the recorder that saves each finished run with
`dvc exp save` from a git worktree sharing the repository's refs and cache."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ffl import atomic
from ffl.data import prepared_provenance
from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.run import run_identity
from pipeline.runtime import working_directory
from pipeline.tables import Run


def git(*args: str, cwd: Path | str = ".") -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"git {' '.join(args)}: {proc.stderr.strip().splitlines()[-1] if proc.stderr else 'failed'}")
    return proc.stdout


def dvc(*args: str, cwd: Path | str = ".") -> str:
    # DVC of this environment, whatever PATH holds.
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"dvc {' '.join(args)}: {dvc_reason(proc)}")
    return proc.stdout


def dvc_reason(proc: subprocess.CompletedProcess) -> str:
    """A failed DVC command's reason: its own ERROR line (the summary; with a traceback after it,
    e.g. a damaged .dvc/config, the last line would be only the parser's "at line 1"), else the
    last line it printed."""
    lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("ERROR")]
    return (errors or lines or ["failed"])[0 if errors else -1]


CODE = ("ffl", "pipeline", "dvc.yaml", "configs", "pyproject.toml")


def check_repository() -> None:
    """Runs are recorded against HEAD: the code they ran must be HEAD's."""
    if not Path(".dvc").is_dir() or not Path(".git").exists():
        raise UserError("ffl reproduce runs in the project's git + DVC repository (its root)")
    changed = [line for line in git("status", "--porcelain", "--", *CODE).splitlines() if line.strip()]
    if changed:
        first = changed[0][3:]  # after the two status letters and a space
        raise UserError(
            f"uncommitted changes ({first} ...): every run is recorded as an experiment of HEAD, "
            "so the code it runs must be HEAD's; commit or stash them first"
        )


# Every run a report was made from, as a plain file beside the reports (``keep_runs``): git versions
# it, so a clone that has none of the DVC experiments (they are refs, pushed only by `dvc exp
# push`) still reports them, and a report is never made from less than the last one.
KEPT = Path("reports/runs")


def kept_runs(folder: Path = KEPT) -> list[dict]:
    """The runs ``keep_runs`` wrote, in the form ``experiments`` gives them."""
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged record is not a run
        if isinstance(run, dict) and {"name", "params", "metrics"} <= set(run):
            found.append({k: run[k] for k in ("name", "params", "metrics")})
    return found


def keep_runs(runs: list[dict], folder: Path = KEPT) -> dict[Path, bytes]:
    """The files that keep ``runs`` (each ``reports/runs/<name>.json``), for the report to write
    with its own files."""
    return {folder / f"{r['name']}.json": (json.dumps(r, indent=1, sort_keys=True) + "\n").encode() for r in runs}


def experiments(all_commits: bool = True, kept: Path = KEPT) -> list[dict]:
    """``[{"name", "params": raw params, "metrics": metrics/test.json}]`` of every DVC experiment of
    every commit (`dvc exp show --json --all-commits`), or of HEAD's; then the runs kept beside the
    reports (``keep_runs``) that no experiment here holds."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"dvc exp show: {dvc_reason(proc)}")
    found = []
    for baseline in json.loads(proc.stdout or "[]"):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = (data.get("params") or {}).get("params.yaml", {}).get("data")
                metrics = (data.get("metrics") or {}).get("metrics/test.json", {}).get("data")
                if params and metrics:
                    found.append({"name": rev.get("name") or rev.get("rev"), "params": params, "metrics": metrics})
    here = {(r["name"], run_identity(r["params"])) for r in found}
    return found + [r for r in kept_runs(kept) if (r["name"], run_identity(r["params"])) not in here]


def recorded() -> dict[str, str]:
    """The experiments recorded at HEAD, name -> run_identity. A run is done when its params are there,
    whatever the experiment's name."""
    return {e["name"]: run_identity(e["params"]) for e in experiments(all_commits=False)}


def sort_out(runs: list[Run], done: dict[str, str]) -> tuple[list[Run], dict[str, str]]:
    """The runs still to do, and the done ones (row's run name -> the experiment that holds it).
    A run whose name HEAD already holds with other params (the row with other -S: a tuned row
    beside its preset) is named with a digest of its params after the row, so that recording it
    never replaces the other experiment."""
    holder = {k: name for name, k in done.items()}
    todo, skipped = [], {}
    for run in runs:
        k = run_identity(run.raw)
        if k in holder:
            skipped[run.name] = holder[k]
            continue
        if run.name in done:
            digest = hashlib.sha1(run_identity(run.raw, seed=False).encode()).hexdigest()
            run = dataclasses.replace(run, variant="-".join(filter(None, [run.variant, digest[:6]])))
        todo.append(run)
    return todo, skipped


@contextlib.contextmanager
def recorder():
    """``record(run, files)``, saving each run as a DVC experiment of HEAD from a git worktree that
    shares this repository's refs and DVC cache (the user's workspace is never touched)."""
    repo = Path.cwd()
    cache = dvc("cache", "dir").strip()
    git("worktree", "prune")  # those of a killed reproduce, whose folders scratch removes
    with atomic.scratch("ffl-reproduce-") as tree:
        git("worktree", "add", "--detach", "--force", str(tree), "HEAD")
        try:
            dvc("cache", "dir", "--local", str(Path(cache).resolve()), cwd=tree)

            def record(run: Run, files: dict[str, bytes]) -> None:
                from pipeline.stages.sequence import run_stages  # dvc.yaml's stages, as reproduce's runs

                git("checkout", "--", ".", cwd=tree)
                git("clean", "-fdq", cwd=tree)  # ignored outputs (data/) stay until replaced
                for out in OUTPUTS:
                    target = tree / out
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
                for rel, content in files.items():
                    (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                    (tree / rel).write_bytes(content)
                (tree / "params.yaml").write_text(yaml.safe_dump(run.raw, sort_keys=False))
                # prepare's output, for dvc.lock: deterministic from the data params, made here once.
                with working_directory(tree):
                    here = link_data_root(run.params, str((repo / run.params.data.root).resolve()))
                    if prepared_provenance("data/prepared") != run.params.data.provenance():
                        run_stages(here, last="prepare")
                (tree / "checkpoints").mkdir(exist_ok=True)  # train's persistent output, empty once a run finished
                dvc("commit", "-f", cwd=tree)
                dvc("exp", "save", "-f", "-n", run.name, "-I", "dvclive", "-I", "plots", "-I", "metrics", cwd=tree)

            yield record
        finally:
            with contextlib.suppress(UserError):
                git("worktree", "remove", "--force", str(tree))


OUTPUTS = ("models", "metrics", "plots", "dvclive")  # every stage's, prepare's aside (made where recorded)


def link_data_root(params: Params, data_root: str) -> Params:
    """The params to run with here, their dataset at ``data_root`` (the one the driver found; on a
    cluster: the same path on every node, or a shared mount). Where the prepared data records its
    root (image-file indexes), ``data.root`` keeps its spelling and becomes a link to the dataset in
    this (scratch) directory; elsewhere (CIFAR, whose files are checked by their sums) the params
    simply point at it, which also serves a root outside the project (../shared/datasets)."""
    if "data.root" not in params.data.provenance():
        return params.model_copy(update={"data": params.data.model_copy(update={"root": data_root})})
    root = Path(params.data.root)
    if not root.is_absolute():
        root.parent.mkdir(parents=True, exist_ok=True)
        if not root.exists() and not root.is_symlink():
            os.symlink(data_root, root)
    return params
