"""A careless user's black-box sweep of the `ffl` command line.

Runs `ffl reproduce`, `ffl report`, `ffl export`, `ffl predict`, `ffl tune` and DDP training
(`ffl train -S train.processes=2`, two gloo CPU processes) with wrong, duplicated or odd
arguments, damaged or odd input files, read-only and vanishing output folders, interrupts and
reruns, and checks every case against the README's contract:

- a failure the user caused ends in ONE line on stderr starting with `error: ` (ffl's own
  progress lines may come before it) that names the file, key or process involved; exit code 2
  for bad input, 1 for a run that failed, 130 for an interrupt; never 0 on failure;
- no Python traceback and no library chatter (Python warnings, Ray, DVC, torch log lines) on
  stderr: a warning is ffl's one `warning: ...` line;
- no half-written outputs; recorded evidence (reports, tune results, metrics) never silently
  replaced by an emptier one;
- repeated inputs are one input (deduplicated, or refused in one line; never run twice);
- valid-but-odd input succeeds sensibly.

Every case runs in its own temporary folder: a copy of a starting point built once per sweep
(tiny params, a prepared dataset, a trained and exported model, a finished search, a git + DVC
clone of this repository with a recorded tiny table). Nothing is written into the repository but
the results file.

    make test-adversarial                                     # with tests/sweeps/adversarial.py, as pytest cases
    .venv/bin/python -m tests.sweeps.careless                 # every case, 2 at a time
    .venv/bin/python -m tests.sweeps.careless --only 'predict_*' ddp_sigint_resume
    .venv/bin/python -m tests.sweeps.careless --md /elsewhere.md --keep

Prints one line per case (PASS/FAIL and why) and writes the Markdown results
(tests/sweeps/results/careless.md by default), which name no machine's paths.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # the virtualenv's bin (not resolved: a venv's python is a link)
FFL = VENV_BIN / "ffl" if (VENV_BIN / "ffl").exists() else REPO / ".venv" / "bin" / "ffl"
UNPRIV = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]  # root without its capabilities
TABLES = "tiny_tables.yaml"
RT = ["--tables", TABLES]

# Tiny values of the embedded shapes run, baked into every starting point's params.yaml.
TINY = {
    "data.shapes.train_per_class": 10,
    "data.shapes.test_per_class": 10,
    "train.epochs": 1,
    "train.batch_size": 16,
    "evaluate.batch_size": 50,
    "train.milestones": [],
    "tune.trials": 2,
}
TINY_TABLES = """\
tiny:
  title: "tiny table"
  base: params.yaml
  set: [data.shapes.train_per_class=10, data.shapes.test_per_class=10, train.epochs=1,
        train.batch_size=16, evaluate.batch_size=50, "train.milestones=[]"]
  rows:
    a: {set: [], paper: {top1_err.fused: 50.0}}
    b: {set: [method.ffl.temperature=2.0], paper: {top1_err.fused: 50.0}}
"""
N_LONG = 30
LONG = ["-S", f"train.epochs={N_LONG}"]  # a DDP run long enough to interrupt after its first epoch
TUNE_LONG = ["--trials", "3", "-S", "train.epochs=15", "-S", "tune.scheduler.name=fifo"]
EXPORT_FILES = {f"{c}.{f}" for c in ("sub0", "sub1", "fused") for f in ("pt2", "onnx")} | {"model.json"}

# Lines on stderr that are a library talking, not ffl (checked on lines not starting with
# `error: ` or `warning: `, ffl's own one-line forms).
CHATTER = [
    re.compile(p)
    for p in (
        r'^\s*File "[^"]+", line \d+',  # traceback frame
        r":\d+: \w*Warning\b",  # a Python warning as the warnings module prints it
        r"\b(User|Future|Deprecation|Runtime|Resource)Warning\b",
        r"^\s*warnings\.warn\(",
        r"^\([\w .-]*(pid=\d+[^)]*)?\)",  # Ray's (raylet) / (pid=123) / (Trainable pid=...) prefixes
        r"^\[?\d{4}-\d\d-\d\d[ T_]\d\d:\d\d:\d\d",  # timestamped log lines (Ray, DVC, torch)
        r"^[IWEF]\d{4} \d\d:\d\d:\d\d",  # glog
        r"^\[[WIE]\d{4}|^\[W ",  # torch's c10 warnings
        r"^\[rank\d+\]",
        r"^(INFO|WARNING|ERROR|DEBUG|CRITICAL)\b",  # logging / DVC
        r"^\*{5,}",  # torchrun's OMP_NUM_THREADS banner
        r"OMP_NUM_THREADS|torch\.distributed|torchrun|c10d|NCCL|ProcessGroup",
        r"Started a local Ray instance|View the dashboard|Ray Tune|Trial status|== Status ==|"
        r"ray\._private|RayTaskError|tune_controller|Checkpoint successfully created|"
        r"Wrote the latest version of all result files",
        r"^\[torch\.onnx\]|onnxscript|Applied \d+ of general pattern",
        r"^\s*\^{3,}\s*$",  # traceback carets
        r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)(: |$)",  # a bare exception line
        r"^\s*[╭│╰┏┃┗┌└]",  # rich / Typer boxes, Ray's tables
        r"^Usage: ",
        r"^\s{2,}\S",  # indented continuation lines (tracebacks, warnings' source lines, paragraphs)
    )
]


# --------------------------------------------------------------------------------------------
# processes


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONUNBUFFERED"] = "1"  # lines come as a terminal would show them, so a case can wait for one
    for k in ("RAY_ADDRESS", "TUNE_PRINT_ALL_TRIAL_ERRORS", "TORCH_LOGS", "LOGLEVEL"):
        e.pop(k, None)
    return e


@dataclass
class Result:
    argv: list[str]
    rc: int | None
    out: str
    err: str
    secs: float
    timed_out: bool = False

    def last_err(self) -> str:
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        return lines[-1] if lines else "(stderr empty)"


class Proc:
    """A command started in its own process group, its output in files (no pipe can fill up)."""

    _n = 0
    _lock = threading.Lock()

    def __init__(self, argv: list[str], cwd: Path, logdir: Path, unpriv: bool = False):
        with Proc._lock:
            Proc._n += 1
            n = Proc._n
        logdir.mkdir(parents=True, exist_ok=True)
        self.argv = argv
        self.out_path, self.err_path = logdir / f"{n}.out", logdir / f"{n}.err"
        self.t0 = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(
                (UNPRIV if unpriv else []) + argv,
                cwd=cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env(),
                start_new_session=True,
            )

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int, group: bool) -> None:
        """Ctrl-C reaches the whole foreground group (group=True); `kill PID` the process alone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, sig) if group else self.p.send_signal(sig)

    def wait(self, timeout: float) -> Result:
        timed_out = False
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
            self.signal(signal.SIGKILL, group=True)
            self.p.wait()
        # what it left behind in its own group (a Ray daemon, a torchrun worker)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, signal.SIGKILL)
        return Result(self.argv, rc, self.stdout(), self.stderr(), time.monotonic() - self.t0, timed_out)


def ffl_argv(args) -> list[str]:
    return [str(FFL), *map(str, args)]


def wait_until(pred: Callable[[], bool], timeout: float, proc: Proc | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc is not None and not proc.alive():
            return pred()
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------------------------
# files


def set_dotted(d: dict, key: str, value) -> None:
    *parts, last = key.split(".")
    for p in parts:
        d = d[p]
    d[last] = value


def tiny_params_text() -> str:
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for k, v in TINY.items():
        set_dotted(params, k, v)
    return yaml.safe_dump(params, sort_keys=False)


def snap(d: Path) -> dict[str, str]:
    """relative path -> sha1 of every file under d (links followed), for 'unchanged' checks."""
    if not d.exists():
        return {}
    if d.is_file():
        return {".": hashlib.sha1(d.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def copytree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, ignore=lambda d, names: ["tmp"] if d.endswith(".dvc") else [])


def make_rgb(path: Path, size=(48, 40), seed=0) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (20 + seed * 30 % 200, 40, 60))
    ImageDraw.Draw(img).ellipse([size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4], fill=(230, 200, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_declared_png(path: Path, w=100_000, h=20_000) -> Path:
    """A 100-byte PNG whose header claims w x h pixels (2 gigapixels by default)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )
    return path


def truncate(path: Path, fraction=0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def json_lines(text: str) -> list[dict] | None:
    try:
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    except json.JSONDecodeError:
        return None


def report_runs(reports: Path, table="tiny") -> int | None:
    """How many runs the recorded report holds (None: no readable report)."""
    try:
        rows = json.loads((reports / f"{table}.json").read_text())["rows"]
        return sum(len(r.get("runs") or []) for r in rows)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export_problems(d: Path, complete: bool) -> list[str]:
    """Every file in an export folder whole (ONNX loads, .pt2 a whole zip, model.json parses)."""
    problems = []
    if not d.is_dir():
        return [f"{d.name}/ missing"] if complete else []
    names = {p.name for p in d.iterdir()}
    for name in sorted(names):
        p = d / name
        if name not in EXPORT_FILES:
            problems.append(f"unexpected file left in {d.name}/: {name}")
            continue
        try:
            if name.endswith(".onnx"):
                import onnxruntime

                onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            elif name.endswith(".pt2"):
                with zipfile.ZipFile(p) as z:
                    if z.testzip() is not None:
                        raise ValueError("a damaged member")
            else:
                json.loads(p.read_text())
        except Exception as e:
            problems.append(f"{d.name}/{name} is not whole ({type(e).__name__})")
    if complete and not names >= EXPORT_FILES:
        problems.append(f"{d.name}/ lacks {sorted(EXPORT_FILES - names)}")
    return problems


def make_readonly(*paths: Path) -> None:
    for top in paths:
        for p in [top, *top.rglob("*")] if top.is_dir() else [top]:
            if not p.is_symlink():
                p.chmod(0o555 if p.is_dir() else 0o444)


# --------------------------------------------------------------------------------------------
# starting points, built once per sweep


class Starts:
    """plain: tiny params.yaml + tiny_tables.yaml; prepared: + data/prepared; base: + a trained
    model and its export; tuned: + a finished 2-trial search in tune/; gitfresh: a git clone of
    this repository (HEAD) with tiny_tables.yaml committed; git: + the tiny table reproduced
    (experiments tiny-a-s0, tiny-b-s0) and reported (reports/tiny.*)."""

    DEPS: ClassVar[dict[str, str | None]] = {
        "plain": None,
        "prepared": "plain",
        "base": "prepared",
        "tuned": "base",
        "gitfresh": None,
        "git": "gitfresh",
    }

    def __init__(self, root: Path):
        self.root = root
        self.dirs: dict[str, Path] = {}
        self.ready = {n: threading.Event() for n in self.DEPS}
        self.failed: dict[str, str] = {}

    def run(self, name: str, *args, timeout=300) -> None:
        d = self.root / name
        r = Proc(ffl_argv(args), d, self.root / "logs").wait(timeout)
        if r.rc != 0:
            raise RuntimeError(f"starting point {name}: ffl {' '.join(args)} -> rc {r.rc}: {r.last_err()}")

    def build_one(self, name: str) -> None:
        d = self.root / name
        dep = self.DEPS[name]
        if dep:
            copytree(self.dirs[dep], d)
        if name == "plain":
            d.mkdir()
            (d / "params.yaml").write_text(tiny_params_text())
            (d / TABLES).write_text(TINY_TABLES)
        elif name == "prepared":
            self.run(name, "prepare")
        elif name == "base":
            self.run(name, "train")
            self.run(name, "export")
        elif name == "tuned":
            self.run(name, "tune")
        elif name == "gitfresh":
            subprocess.run(["git", "clone", "-q", str(REPO), str(d)], check=True, capture_output=True)
            (d / TABLES).write_text(TINY_TABLES)
            subprocess.run(["git", "add", TABLES], cwd=d, check=True, capture_output=True)
            subprocess.run(["git", "commit", "-q", "-m", "tiny table"], cwd=d, check=True, capture_output=True)
        elif name == "git":
            self.run(name, "reproduce", "tiny", *RT, "--seeds", "0")
            self.run(name, "report", "tiny", *RT)
        self.dirs[name] = d

    def start(self, needed: set[str]) -> None:
        """Builds the needed starting points in two background chains (plain..tuned, gitfresh..git);
        cases start as soon as theirs are ready."""

        def chain(last: str) -> list[str]:
            out = []
            while last:
                out.insert(0, last)
                last = self.DEPS[last]
            return out

        def build_chain(names: list[str]) -> None:
            for k, n in enumerate(names):
                try:
                    self.build_one(n)
                except Exception as e:
                    for m in names[k:]:
                        self.failed[m] = str(e)
                        self.ready[m].set()
                    return
                self.ready[n].set()

        for top in (("tuned", "base", "prepared", "plain"), ("git", "gitfresh")):
            for name in top:
                if any(n in needed for n in top[: top.index(name) + 1]):
                    threading.Thread(target=build_chain, args=(chain(name),), daemon=True).start()
                    break

    def is_ready(self, names: set[str]) -> bool:
        return all(self.ready[n].is_set() for n in names)


# --------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    name: str
    what: str
    cmd: str
    expected: str
    fn: Callable
    needs: set[str]
    weight: float  # seconds, roughly: the longest start first


CASES: dict[str, Case] = {}


def case(name, what, cmd, expected, needs=(), weight=5.0):
    def deco(fn):
        assert name not in CASES, name
        CASES[name] = Case(name, what, cmd, expected, fn, set(needs), weight)
        return fn

    return deco


class Ctx:
    def __init__(self, name: str, root: Path, starts: Starts):
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
        self.starts = starts
        self.problems: list[str] = []
        self.steps: list[str] = []

    # workspace and commands ------------------------------------------------------------------
    def ws(self, start: str | None = None, sub: str = "ws") -> Path:
        d = self.tmp / sub
        if start is None:
            d.mkdir()
        else:
            copytree(self.starts.dirs[start], d)
        return d

    def spawn(self, *args, cwd: Path, unpriv=False) -> Proc:
        return Proc(ffl_argv(args), cwd, self.tmp / "logs", unpriv)

    def ffl(self, *args, cwd: Path, unpriv=False, timeout=120, label=None) -> Result:
        return self.finish(self.spawn(*args, cwd=cwd, unpriv=unpriv), timeout, label)

    def finish(self, proc: Proc, timeout=120, label=None) -> Result:
        r = proc.wait(timeout)
        self.record(r, label)
        return r

    def record(self, r: Result, label=None) -> None:
        what = "timed out" if r.timed_out else f"rc={r.rc}"
        tail = [ln.strip()[:200] for ln in r.err.splitlines() if ln.strip()][-2:] or ["(stderr empty)"]
        self.steps.append(f"{label + ': ' if label else ''}{what}, stderr: {' ⏎ '.join(tail)!r}")
        if r.timed_out:
            self.problems.append(f"{label or 'command'} did not end within its time limit (hangs)")

    def check(self, cond, msg: str) -> bool:
        if not cond:
            self.problems.append(msg)
        return bool(cond)

    def note(self, msg: str) -> None:
        self.steps.append(msg)

    # the contract -----------------------------------------------------------------------------
    def stream_problems(self, r: Result, failing: bool, label: str, process_lines=False) -> None:
        pre = f"{label}: " if label else ""
        both = r.out + "\n" + r.err
        if "Traceback (most recent call last)" in both:
            self.problems.append(f"{pre}Python traceback")
        lines = [ln for ln in r.err.splitlines() if ln.strip()]
        chatter = [
            ln for ln in lines if not ln.startswith(("error: ", "warning: ")) and any(rx.search(ln) for rx in CHATTER)
        ]
        if chatter:
            self.problems.append(f"{pre}{len(chatter)} line(s) of library chatter on stderr, e.g. {chatter[0][:160]!r}")
        errors = [ln for ln in lines if ln.startswith("error:")]
        allowed = 1
        if process_lines:  # README's DDP failure: the failed process's own line, the stopped ones' `process N: ...`
            errors = [ln for ln in errors[:-1] if not re.match(r"error: process \d+: ", ln)] + errors[-1:]
            allowed = 2  # lines, then the line naming the process that failed
        if failing:
            if not lines or not lines[-1].startswith("error: "):
                self.problems.append(f"{pre}stderr does not end in an 'error: ...' line")
            if len(errors) > allowed:
                self.problems.append(f"{pre}{len(errors)} 'error:' lines instead of one")
        elif errors:
            self.problems.append(f"{pre}an 'error:' line on a run that exited 0")

    def expect_error(self, r: Result, codes=(2,), names=(), anywhere=False, label="", process_lines=False) -> None:
        """A refusal or failure: rc in codes, one error line last, naming one of `names`."""
        pre = f"{label}: " if label else ""
        if r.timed_out:
            return
        if r.rc == 0:
            self.problems.append(f"{pre}exit 0 where it should fail (expected {'/'.join(map(str, codes))})")
            self.stream_problems(r, failing=False, label=label)
            return
        self.check(r.rc in codes, f"{pre}exit code {r.rc}, expected {'/'.join(map(str, codes))}")
        self.stream_problems(r, failing=True, label=label, process_lines=process_lines)
        if names:
            where = r.err if anywhere else r.last_err()
            if not any(n.lower() in where.lower() for n in names):
                self.problems.append(f"{pre}the error does not name {' or '.join(repr(n) for n in names)}")

    def expect_ok(self, r: Result, label="") -> bool:
        pre = f"{label}: " if label else ""
        if r.timed_out:
            return False
        self.check(r.rc == 0, f"{pre}exit code {r.rc}, expected 0")
        self.stream_problems(r, failing=r.rc != 0, label=label)
        return r.rc == 0

    def expect_interrupt(self, r: Result, label="interrupted") -> None:
        self.expect_error(r, codes=(130,), label=label)

    def expect_clean(self, r: Result, codes=(1, 2), names=(), label="", anywhere=False, process_lines=False) -> bool:
        """Either a success or a failure by the contract; True when it succeeded."""
        if r.timed_out:
            return False
        if r.rc == 0:
            return self.expect_ok(r, label)
        self.expect_error(r, codes, names, anywhere=anywhere, label=label, process_lines=process_lines)
        return False

    # helpers ----------------------------------------------------------------------------------
    def exps(self, ws: Path) -> list[str]:
        out = subprocess.run(
            ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=ws, capture_output=True, text=True
        ).stdout.split()
        return sorted(r.rsplit("/", 1)[-1] for r in out if r.rsplit("/", 1)[-1].startswith("tiny-"))

    def interrupt_after(self, proc: Proc, pred, sig: int, group: bool, wait_s=90, extra_s=0.0, what="") -> bool:
        if not wait_until(pred, wait_s, proc):
            self.problems.append(f"the run never reached the point to interrupt ({what}); rc {proc.p.poll()}")
            return False
        time.sleep(extra_s)
        if not proc.alive():
            self.note(f"it finished before the {signal.Signals(sig).name} could be sent")
            return False
        proc.signal(sig, group)
        return True


def children(proc: Proc) -> list:
    import psutil

    try:
        return psutil.Process(proc.p.pid).children(recursive=True)
    except psutil.Error:
        return []


def cmdline(k) -> str:
    import psutil

    try:
        return " ".join(k.cmdline())
    except psutil.Error:
        return ""


def ray_starting(proc: Proc) -> Callable[[], bool]:
    """True once the command's local Ray has started its GCS server (ray.init under way)."""
    return lambda: any("gcs_server" in cmdline(k) for k in children(proc))


def dvclive_epochs(ws: Path, where="dvclive") -> int | None:
    f = ws / where / "plots" / "metrics" / "train" / "loss" / "total.tsv"
    if not f.exists():
        return None
    return len([ln for ln in f.read_text().splitlines() if ln.strip()]) - 1


# ----- ffl reproduce ---------------------------------------------------------------------------


@case(
    "reproduce_unknown_table",
    "a table name that is not in the tables file",
    "ffl reproduce nosuch --tables tiny_tables.yaml --seeds 0",
    "exit 2, one error line naming 'nosuch'; no experiment",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl("reproduce", "nosuch", *RT, "--seeds", "0", cwd=ws)
    c.expect_error(r, names=["nosuch"])
    c.check(not c.exps(ws), "an experiment was recorded")


@case(
    "reproduce_unknown_row",
    "a row that the table does not have",
    "ffl reproduce tiny --tables tiny_tables.yaml --rows zz --seeds 0",
    "exit 2, one error line naming 'zz'; no experiment",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl("reproduce", "tiny", *RT, "--rows", "zz", "--seeds", "0", cwd=ws)
    c.expect_error(r, names=["zz"])
    c.check(not c.exps(ws), "an experiment was recorded")


@case(
    "reproduce_repeated_rows_seeds",
    "the same row and the same seed given twice",
    "ffl reproduce tiny --tables tiny_tables.yaml --rows a --rows a --seeds 0 --seeds 0",
    "one run (tiny-a-s0 recorded once), exit 0; or a one-line refusal (exit 2)",
    needs={"gitfresh"},
    weight=30,
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl(
        "reproduce", "tiny", *RT, "--rows", "a", "--rows", "a", "--seeds", "0", "--seeds", "0", cwd=ws, timeout=240
    )
    if c.expect_clean(r, codes=(2,), names=["--rows", "--seeds"]):
        c.check(c.exps(ws) == ["tiny-a-s0"], f"experiments recorded: {c.exps(ws)} (expected tiny-a-s0 once)")


@case(
    "reproduce_seed_not_a_number",
    "a seed that is not a number",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds one",
    "exit 2, one error line naming --seeds",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    c.expect_error(c.ffl("reproduce", "tiny", *RT, "--seeds", "one", cwd=ws), names=["--seeds"])


@case(
    "reproduce_negative_seed",
    "a negative seed, dry run",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds -1 --dry-run",
    "listed sensibly (exit 0) or refused in one line naming the seed (exit 2)",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl("reproduce", "tiny", *RT, "--seeds", "-1", "--dry-run", cwd=ws)
    c.expect_clean(r, codes=(2,), names=["seed"])
    c.check(not c.exps(ws), "a dry run recorded an experiment")


@case(
    "reproduce_seed_overflow",
    "a seed of 25 digits, dry run",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds 9999999999999999999999999 --dry-run",
    "refused in one line naming the seed (exit 2), or listed (exit 0)",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl("reproduce", "tiny", *RT, "--seeds", "9" * 25, "--dry-run", cwd=ws)
    c.expect_clean(r, codes=(2,), names=["seed"])


@case(
    "reproduce_missing_tables_file",
    "--tables names a file that does not exist",
    "ffl reproduce tiny --tables nothere.yaml --seeds 0",
    "exit 2, one error line naming nothere.yaml",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    c.expect_error(
        c.ffl("reproduce", "tiny", "--tables", "nothere.yaml", "--seeds", "0", cwd=ws), names=["nothere.yaml"]
    )


@case(
    "reproduce_damaged_tables_file",
    "a tables file that is not valid YAML",
    "ffl reproduce tiny --tables broken.yaml --seeds 0",
    "exit 2, one error line naming broken.yaml",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    (ws / "broken.yaml").write_text("tiny:\n  title: [unclosed\n  rows: {a: {set: [}\n")
    c.expect_error(c.ffl("reproduce", "tiny", "--tables", "broken.yaml", "--seeds", "0", cwd=ws), names=["broken.yaml"])


@case(
    "reproduce_tables_is_a_folder",
    "--tables names a folder",
    "ffl reproduce tiny --tables configs --seeds 0",
    "exit 2, one error line naming configs",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    c.expect_error(c.ffl("reproduce", "tiny", "--tables", "configs", "--seeds", "0", cwd=ws), names=["configs"])


@case(
    "reproduce_row_with_unknown_key",
    "a row whose set holds a key params.yaml does not have",
    "ffl reproduce tiny --tables badkey.yaml --seeds 0   (row a: set [train.nosuch=1])",
    "exit 2 before any run, one error line naming train.nosuch; no experiment",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    (ws / "badkey.yaml").write_text(TINY_TABLES.replace("a: {set: []", "a: {set: [train.nosuch=1]"))
    r = c.ffl("reproduce", "tiny", "--tables", "badkey.yaml", "--seeds", "0", cwd=ws)
    c.expect_error(r, names=["train.nosuch"])
    c.check(not c.exps(ws), "an experiment was recorded")


@case(
    "reproduce_table_base_missing",
    "a table whose base params file does not exist",
    "ffl reproduce tiny --tables nobase.yaml --seeds 0   (base: nothere.yaml)",
    "exit 2, one error line naming nothere.yaml",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    (ws / "nobase.yaml").write_text(TINY_TABLES.replace("base: params.yaml", "base: nothere.yaml"))
    c.expect_error(
        c.ffl("reproduce", "tiny", "--tables", "nobase.yaml", "--seeds", "0", cwd=ws), names=["nothere.yaml"]
    )


@case(
    "reproduce_empty_table",
    "a table with no rows",
    "ffl reproduce tiny --tables empty.yaml --seeds 0   (rows: {})",
    "refused in one line naming the table or its rows (exit 2), or nothing to run (exit 0)",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    (ws / "empty.yaml").write_text('tiny:\n  title: "t"\n  base: params.yaml\n  rows: {}\n')
    c.expect_clean(
        c.ffl("reproduce", "tiny", "--tables", "empty.yaml", "--seeds", "0", cwd=ws), codes=(2,), names=["tiny", "rows"]
    )
    c.check(not c.exps(ws), "an experiment was recorded")


@case(
    "reproduce_symlinked_tables",
    "the tables file is a symlink, dry run",
    "ffl reproduce tiny --tables link.yaml --dry-run   (link.yaml -> tiny_tables.yaml)",
    "exit 0, both runs listed, nothing recorded",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    (ws / "link.yaml").symlink_to(TABLES)
    r = c.ffl("reproduce", "tiny", "--tables", "link.yaml", "--seeds", "0", "--dry-run", cwd=ws)
    if c.expect_ok(r):
        c.check("tiny-a-s0" in r.out and "tiny-b-s0" in r.out, "the dry run does not list tiny-a-s0 and tiny-b-s0")
    c.check(not c.exps(ws), "a dry run recorded an experiment")


@case(
    "reproduce_bad_override",
    "an out-of-range -S for every run",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds 0 -S train.lr=-1",
    "exit 2 before any run, one error line naming train.lr; no experiment",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl("reproduce", "tiny", *RT, "--seeds", "0", "-S", "train.lr=-1", cwd=ws)
    c.expect_error(r, names=["train.lr"])
    c.check(not c.exps(ws), "an experiment was recorded")


@case(
    "reproduce_missing_params_file",
    "-p names a params file that does not exist",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds 0 -p nothere.yaml",
    "exit 2, one error line naming nothere.yaml",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    c.expect_error(
        c.ffl("reproduce", "tiny", *RT, "--seeds", "0", "-p", "nothere.yaml", cwd=ws), names=["nothere.yaml"]
    )


@case(
    "reproduce_address_nobody_listens",
    "--address of a port where no Ray cluster runs",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds 0 --address 127.0.0.1:9",
    "exit 2 within a minute, one error line naming 127.0.0.1:9",
    needs={"gitfresh"},
    weight=20,
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl("reproduce", "tiny", *RT, "--seeds", "0", "--address", "127.0.0.1:9", cwd=ws, timeout=90)
    c.expect_error(r, names=["127.0.0.1:9"])


@case(
    "reproduce_outside_git",
    "reproduce in a folder that is not a git/DVC repository",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds 0   (plain folder)",
    "exit 2, one error line naming git (or DVC); nothing run",
    needs={"plain"},
)
def _(c: Ctx):
    ws = c.ws("plain")
    c.expect_error(c.ffl("reproduce", "tiny", *RT, "--seeds", "0", cwd=ws, timeout=90), names=["git", "dvc"])


@case(
    "reproduce_uncommitted_code",
    "a tracked code file edited and not committed",
    "echo '# edit' >> pipeline/stages/train.py; ffl reproduce tiny --tables tiny_tables.yaml --seeds 0",
    "exit 2, one error line naming the file or saying to commit (README: the code must be committed); no experiment",
    needs={"gitfresh"},
    weight=25,
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    with open(ws / "pipeline" / "stages" / "train.py", "a") as f:
        f.write("# a careless edit\n")
    r = c.ffl("reproduce", "tiny", *RT, "--seeds", "0", cwd=ws, timeout=240)
    c.expect_error(r, names=["train.py", "commit"])
    c.check(not c.exps(ws), f"experiments recorded against uncommitted code: {c.exps(ws)}")


@case(
    "reproduce_rerun_recorded",
    "the same reproduction again, every run recorded already",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds 0   (twice)",
    "exit 0, nothing run again, the recorded experiments untouched",
    needs={"git"},
    weight=15,
)
def _(c: Ctx):
    ws = c.ws("git")
    refs = lambda: subprocess.run(["git", "show-ref"], cwd=ws, capture_output=True, text=True).stdout
    before = refs()
    r = c.ffl("reproduce", "tiny", *RT, "--seeds", "0", cwd=ws, timeout=180)
    c.expect_ok(r)
    c.check(refs() == before, "the git refs (experiments) changed on a rerun of recorded runs")
    c.check(c.exps(ws) == ["tiny-a-s0", "tiny-b-s0"], f"experiments: {c.exps(ws)}")


@case(
    "reproduce_dry_run",
    "a dry run of a table that has not run",
    "ffl reproduce tiny --tables tiny_tables.yaml --seeds 0 --seeds 1 --dry-run",
    "exit 0, four runs listed, nothing recorded",
    needs={"gitfresh"},
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl("reproduce", "tiny", *RT, "--seeds", "0", "--seeds", "1", "--dry-run", cwd=ws)
    if c.expect_ok(r):
        c.check(all(f"tiny-{x}-s{s}" in r.out for x in "ab" for s in (0, 1)), "the dry run does not list the 4 runs")
    c.check(not c.exps(ws), "a dry run recorded an experiment")


def reproduce_interrupted(c: Ctx, sig: int, group: bool):
    ws = c.ws("gitfresh")
    args = ("reproduce", "tiny", *RT, "--rows", "a", "--seeds", "0")
    p = c.spawn(*args, cwd=ws)
    sent = c.interrupt_after(p, lambda: "runs started" in p.stdout(), sig, group, extra_s=4, what="'runs started'")
    r = c.finish(p, 90, "interrupted")
    if sent:
        c.expect_interrupt(r)
    r2 = c.ffl(*args, cwd=ws, timeout=240, label="rerun")
    c.expect_ok(r2, "rerun")
    c.check(c.exps(ws) == ["tiny-a-s0"], f"experiments after the rerun: {c.exps(ws)} (tiny-a-s0 once)")


@case(
    "reproduce_sigint_rerun",
    "Ctrl-C (SIGINT to the group) 4 s after the run of row a started, then the same command",
    "ffl reproduce tiny --tables tiny_tables.yaml --rows a --seeds 0; ^C; rerun",
    "exit 130 with one error line; the rerun exits 0; tiny-a-s0 recorded once",
    needs={"gitfresh"},
    weight=60,
)
def _(c: Ctx):
    reproduce_interrupted(c, signal.SIGINT, group=True)


@case(
    "reproduce_sigterm_rerun",
    "SIGTERM to ffl alone 4 s after the run of row a started, then the same command",
    "ffl reproduce tiny --tables tiny_tables.yaml --rows a --seeds 0; kill PID; rerun",
    "exit 130 with one error line; the rerun exits 0; tiny-a-s0 recorded once",
    needs={"gitfresh"},
    weight=60,
)
def _(c: Ctx):
    reproduce_interrupted(c, signal.SIGTERM, group=False)


def reproduce_at_ray_start(c: Ctx, sig: int, group: bool):
    ws = c.ws("gitfresh")
    p = c.spawn("reproduce", "tiny", *RT, "--rows", "a", "--seeds", "0", cwd=ws)
    if c.interrupt_after(p, ray_starting(p), sig, group, wait_s=90, what="Ray's GCS server"):
        c.expect_interrupt(c.finish(p, 90, "interrupted"))
    else:
        c.finish(p, 90, "run")
    c.check(not c.exps(ws), f"experiments recorded: {c.exps(ws)}")


@case(
    "reproduce_sigint_while_ray_starts",
    "Ctrl-C (SIGINT to the group) while the command's local Ray starts",
    "ffl reproduce tiny --tables tiny_tables.yaml --rows a --seeds 0; ^C once Ray's gcs_server runs",
    "exit 130 with one error line; nothing recorded",
    needs={"gitfresh"},
    weight=12,
)
def _(c: Ctx):
    reproduce_at_ray_start(c, signal.SIGINT, group=True)


@case(
    "reproduce_sigterm_while_ray_starts",
    "SIGTERM to ffl alone while the command's local Ray starts",
    "ffl reproduce tiny --tables tiny_tables.yaml --rows a --seeds 0; kill PID once Ray's gcs_server runs",
    "exit 130 with one error line; nothing recorded",
    needs={"gitfresh"},
    weight=12,
)
def _(c: Ctx):
    reproduce_at_ray_start(c, signal.SIGTERM, group=False)


# ----- ffl report ------------------------------------------------------------------------------


@case(
    "report_unknown_table",
    "a table that the tables file does not have",
    "ffl report nosuch --tables tiny_tables.yaml",
    "exit 2, one error line naming 'nosuch'; reports/ unchanged",
    needs={"git"},
)
def _(c: Ctx):
    ws = c.ws("git")
    before = snap(ws / "reports")
    c.expect_error(c.ffl("report", "nosuch", *RT, cwd=ws), names=["nosuch"])
    c.check(snap(ws / "reports") == before, "reports/ changed")


@case(
    "report_repeated_table",
    "the same table named twice",
    "ffl report tiny tiny --tables tiny_tables.yaml",
    "exit 0, reports/tiny.md written once with both runs (or a one-line refusal, exit 2)",
    needs={"git"},
    weight=20,
)
def _(c: Ctx):
    ws = c.ws("git")
    r = c.ffl("report", "tiny", "tiny", *RT, cwd=ws, timeout=120)
    if c.expect_clean(r, codes=(2,), names=["tiny"]):
        c.check(r.out.count("tiny.md") <= 1, f"the report was written {r.out.count('tiny.md')} times")
        c.check(
            report_runs(ws / "reports") == 2, f"reports/tiny.json holds {report_runs(ws / 'reports')} runs, expected 2"
        )


def keep_report_case(c: Ctx, start: str, extra: list[str]):
    ws = c.ws(start)
    if start != "git":  # a workspace with no experiments but the report of an earlier one
        shutil.rmtree(ws / "reports")
        shutil.copytree(c.starts.dirs["git"] / "reports", ws / "reports")
    before, runs_before = snap(ws / "reports"), report_runs(ws / "reports")
    r = c.ffl("report", "tiny", *RT, *extra, cwd=ws, timeout=120)
    c.expect_clean(r, codes=(1, 2), names=["tiny", "experiment", "run"])
    after = report_runs(ws / "reports")
    if snap(ws / "reports") != before:
        c.check(
            after is not None and after >= runs_before,
            f"the report of {runs_before} runs was replaced by one of {after} runs"
            + (" (exit 0, said nothing)" if r.rc == 0 and "warning" not in r.err else ""),
        )
    else:
        c.note("reports/ unchanged")


@case(
    "report_no_experiments_keeps_report",
    "report in a clone with no DVC experiments where reports/tiny.* of 2 runs already exists",
    "ffl report tiny --tables tiny_tables.yaml   (no experiments, earlier report present)",
    "the earlier report is kept (not replaced by an emptier one); a clean exit",
    needs={"gitfresh", "git"},
    weight=15,
)
def _(c: Ctx):
    keep_report_case(c, "gitfresh", [])


@case(
    "report_other_params_keeps_report",
    "report with a -S that no recorded run has, over an existing report of 2 runs",
    "ffl report tiny --tables tiny_tables.yaml -S train.lr=0.05",
    "the earlier report is not silently replaced by one without runs; a clean exit",
    needs={"git"},
    weight=15,
)
def _(c: Ctx):
    keep_report_case(c, "git", ["-S", "train.lr=0.05"])


@case(
    "report_no_experiments_no_report",
    "report where nothing was run and no report exists",
    "ffl report tiny --tables tiny_tables.yaml   (fresh clone)",
    "a report whose rows say they have no runs (exit 0), or a one-line refusal",
    needs={"gitfresh"},
    weight=15,
)
def _(c: Ctx):
    ws = c.ws("gitfresh")
    r = c.ffl("report", "tiny", *RT, cwd=ws, timeout=120)
    if c.expect_clean(r, codes=(1, 2), names=["tiny", "experiment", "run"]):
        c.check((ws / "reports" / "tiny.md").exists(), "exit 0 but no reports/tiny.md")


@case(
    "report_readonly_reports",
    "reports/ and its files read-only (run without root's capabilities)",
    "chmod -R a-w reports; ffl report tiny --tables tiny_tables.yaml",
    "exit 1 or 2, one error line naming reports; the earlier report intact",
    needs={"git"},
    weight=15,
)
def _(c: Ctx):
    ws = c.ws("git")
    before = snap(ws / "reports")
    make_readonly(ws / "reports")
    r = c.ffl("report", "tiny", *RT, cwd=ws, unpriv=True, timeout=120)
    if r.rc == 0 and "wrote" not in r.out:
        c.note("exit 0 without writing")
        c.expect_ok(r)
    else:
        c.expect_error(r, codes=(1, 2), names=["reports"])
    c.check(snap(ws / "reports") == before, "reports/ changed although read-only")


@case(
    "report_reports_is_a_file",
    "a regular file named reports where the folder should be",
    "rm -r reports; echo x > reports; ffl report tiny --tables tiny_tables.yaml",
    "exit 1 or 2, one error line naming reports; the file untouched",
    needs={"git"},
    weight=15,
)
def _(c: Ctx):
    ws = c.ws("git")
    shutil.rmtree(ws / "reports")
    (ws / "reports").write_text("my notes\n")
    r = c.ffl("report", "tiny", *RT, cwd=ws, timeout=120)
    c.expect_error(r, codes=(1, 2), names=["reports"])
    c.check((ws / "reports").read_text() == "my notes\n", "the file 'reports' was changed")


@case(
    "report_damaged_tables_file",
    "a tables file that is not valid YAML",
    "ffl report tiny --tables broken.yaml",
    "exit 2, one error line naming broken.yaml",
    needs={"git"},
)
def _(c: Ctx):
    ws = c.ws("git")
    (ws / "broken.yaml").write_text("tiny: {rows: [\n")
    c.expect_error(c.ffl("report", "tiny", "--tables", "broken.yaml", cwd=ws), names=["broken.yaml"])


@case(
    "report_missing_tables_file",
    "--tables names a file that does not exist",
    "ffl report tiny --tables nothere.yaml",
    "exit 2, one error line naming nothere.yaml",
    needs={"git"},
)
def _(c: Ctx):
    ws = c.ws("git")
    c.expect_error(c.ffl("report", "tiny", "--tables", "nothere.yaml", cwd=ws), names=["nothere.yaml"])


@case(
    "report_outside_git",
    "report in a folder that is not a git/DVC repository",
    "ffl report tiny --tables tiny_tables.yaml   (plain folder)",
    "exit 2, one error line naming git (or DVC); no reports/ written",
    needs={"plain"},
)
def _(c: Ctx):
    ws = c.ws("plain")
    c.expect_error(c.ffl("report", "tiny", *RT, cwd=ws, timeout=90), names=["git", "dvc"])
    c.check(not (ws / "reports").exists(), "reports/ was written outside a repository")


@case(
    "report_rerun_same",
    "the same report again on the same experiments",
    "ffl report tiny --tables tiny_tables.yaml   (over the existing report)",
    "exit 0, reports/tiny.md and .json identical to the first report",
    needs={"git"},
    weight=15,
)
def _(c: Ctx):
    ws = c.ws("git")
    md, js = (ws / "reports" / "tiny.md").read_text(), (ws / "reports" / "tiny.json").read_text()
    if c.expect_ok(c.ffl("report", "tiny", *RT, cwd=ws, timeout=120)):
        c.check((ws / "reports" / "tiny.md").read_text() == md, "reports/tiny.md differs from the first report")
        c.check((ws / "reports" / "tiny.json").read_text() == js, "reports/tiny.json differs from the first report")


@case(
    "report_sigint_midway",
    "Ctrl-C 3 s into a report that rewrites an existing one",
    "ffl report tiny --tables tiny_tables.yaml; ^C after 3 s",
    "exit 130 with one error line; reports/tiny.* whole (the old or the new one)",
    needs={"git"},
    weight=10,
)
def _(c: Ctx):
    ws = c.ws("git")
    p = c.spawn("report", "tiny", *RT, cwd=ws)
    sent = c.interrupt_after(p, lambda: True, signal.SIGINT, group=True, extra_s=3)
    r = c.finish(p, 60, "interrupted")
    if sent:
        c.expect_interrupt(r)
    else:
        c.expect_ok(r)
    c.check(
        report_runs(ws / "reports") == 2,
        f"reports/tiny.json not whole after the interrupt ({report_runs(ws / 'reports')} runs)",
    )
    left = [
        p.name for p in (ws / "reports").iterdir() if not re.fullmatch(r"(tiny|cifar10-cpu)\.(md|json|png)", p.name)
    ]
    c.check(not left, f"files left in reports/: {left}")


# ----- ffl export ------------------------------------------------------------------------------


@case(
    "export_missing_model",
    "export where nothing was trained",
    "ffl export   (no models/model.pt)",
    "exit 2, one error line naming models/model.pt; nothing written",
    needs={"plain"},
)
def _(c: Ctx):
    ws = c.ws("plain")
    c.expect_error(c.ffl("export", cwd=ws), names=["model.pt"])
    c.check(not (ws / "models" / "export").exists(), "models/export was created")


def damaged_model_export(c: Ctx, damage: Callable[[Path], None]):
    ws = c.ws("base")
    before = snap(ws / "models" / "export")
    damage(ws / "models" / "model.pt")
    c.expect_error(c.ffl("export", cwd=ws), names=["model.pt"])
    c.check(snap(ws / "models" / "export") == before, "the earlier export changed")


@case(
    "export_truncated_model",
    "models/model.pt cut to half its size",
    "truncate models/model.pt; ffl export",
    "exit 2, one error line naming models/model.pt; the earlier export untouched",
    needs={"base"},
)
def _(c: Ctx):
    damaged_model_export(c, truncate)


@case(
    "export_text_as_model",
    "models/model.pt is a text file",
    "echo 'not a model' > models/model.pt; ffl export",
    "exit 2, one error line naming models/model.pt",
    needs={"base"},
)
def _(c: Ctx):
    damaged_model_export(c, lambda p: p.write_text("not a model\n"))


@case(
    "export_empty_model",
    "models/model.pt is empty",
    ": > models/model.pt; ffl export",
    "exit 2, one error line naming models/model.pt",
    needs={"base"},
)
def _(c: Ctx):
    damaged_model_export(c, lambda p: p.write_bytes(b""))


def foreign_torch_file(p: Path):
    import torch

    torch.save({"weights": [1, 2, 3], "note": "someone else's"}, p)


@case(
    "export_foreign_torch_file",
    "models/model.pt is a torch.save of someone else's dict",
    "torch.save({'weights': [1,2,3]}, 'models/model.pt'); ffl export",
    "exit 2, one error line naming models/model.pt",
    needs={"base"},
)
def _(c: Ctx):
    damaged_model_export(c, foreign_torch_file)


@case(
    "export_unknown_classifier",
    "a classifier the model does not have",
    "ffl export --classifier sub9 --out out9",
    "exit 2, one error line naming sub9; out9 not created",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("export", "--classifier", "sub9", "--out", "out9", cwd=ws), names=["sub9"])
    c.check(not (ws / "out9").exists(), "out9/ was created")


@case(
    "export_unknown_format",
    "a format export does not know",
    "ffl export --format tflite --out outf",
    "exit 2, one error line naming tflite; outf not created",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("export", "--format", "tflite", "--out", "outf", cwd=ws), names=["tflite"])
    c.check(not (ws / "outf").exists(), "outf/ was created")


@case(
    "export_repeated_options",
    "the same classifier and format given twice",
    "ffl export --classifier sub0 --classifier sub0 --format onnx --format onnx --out dup",
    "exit 0, sub0.onnx written once (dup/: sub0.onnx + model.json), or a one-line refusal",
    needs={"base"},
    weight=10,
)
def _(c: Ctx):
    ws = c.ws("base")
    r = c.ffl(
        "export",
        "--classifier",
        "sub0",
        "--classifier",
        "sub0",
        "--format",
        "onnx",
        "--format",
        "onnx",
        "--out",
        "dup",
        cwd=ws,
    )
    if c.expect_clean(r, codes=(2,), names=["--classifier", "--format"]):
        c.check(r.out.count("sub0.onnx") <= 1, f"sub0.onnx written {r.out.count('sub0.onnx')} times")
        names = {p.name for p in (ws / "dup").iterdir()} if (ws / "dup").is_dir() else set()
        c.check(names == {"sub0.onnx", "model.json"}, f"dup/ holds {sorted(names)}")
        c.problems += export_problems(ws / "dup", complete=False)


@case(
    "export_out_readonly",
    "--out a read-only folder holding an earlier export (run without root's capabilities)",
    "cp -r models/export ro; chmod -R a-w ro; ffl export --out ro",
    "exit 1 or 2, one error line naming ro; the earlier export in ro/ untouched and still read-only",
    needs={"base"},
    weight=10,
)
def _(c: Ctx):
    ws = c.ws("base")
    shutil.copytree(ws / "models" / "export", ws / "ro")
    make_readonly(ws / "ro")
    before = snap(ws / "ro")
    c.expect_error(c.ffl("export", "--out", "ro", cwd=ws, unpriv=True), codes=(1, 2), names=["ro"])
    c.check(snap(ws / "ro") == before, "the files in ro/ changed")
    c.check(not leftovers(ws), f"left beside ro/: {leftovers(ws)}")
    c.check(
        (ws / "ro").stat().st_mode & 0o222 == 0, f"ro/ is writable now (mode {oct((ws / 'ro').stat().st_mode & 0o777)})"
    )


@case(
    "export_out_readonly_empty",
    "--out an empty read-only folder (run without root's capabilities)",
    "mkdir ro; chmod 555 ro; ffl export --out ro",
    "exit 1 or 2, one error line naming ro; ro/ left empty and read-only",
    needs={"base"},
    weight=10,
)
def _(c: Ctx):
    ws = c.ws("base")
    (ws / "ro").mkdir()
    make_readonly(ws / "ro")
    c.expect_error(c.ffl("export", "--out", "ro", cwd=ws, unpriv=True), codes=(1, 2), names=["ro"])
    c.check(not any((ws / "ro").iterdir()), "files appeared in ro/")
    c.check(not leftovers(ws), f"left beside ro/: {leftovers(ws)}")
    c.check(
        (ws / "ro").stat().st_mode & 0o222 == 0, f"ro/ is writable now (mode {oct((ws / 'ro').stat().st_mode & 0o777)})"
    )


@case(
    "export_out_is_a_file",
    "--out names an existing regular file",
    "echo x > afile; ffl export --out afile",
    "exit 2, one error line naming afile; the file untouched",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    (ws / "afile").write_text("keep me\n")
    c.expect_error(c.ffl("export", "--out", "afile", cwd=ws), codes=(2,), names=["afile"])
    c.check((ws / "afile").read_text() == "keep me\n", "afile was changed")


@case(
    "export_model_is_a_folder",
    "--model names a folder",
    "ffl export --model models --out x",
    "exit 2, one error line naming models",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("export", "--model", "models", "--out", "x", cwd=ws), names=["models"])


@case(
    "export_model_symlink",
    "--model is a symlink to the trained model",
    "ln -s models/model.pt link.pt; ffl export --model link.pt --out vialink",
    "exit 0, vialink/ holds the 7 files, each whole",
    needs={"base"},
    weight=12,
)
def _(c: Ctx):
    ws = c.ws("base")
    (ws / "link.pt").symlink_to("models/model.pt")
    if c.expect_ok(c.ffl("export", "--model", "link.pt", "--out", "vialink", cwd=ws)):
        c.problems += export_problems(ws / "vialink", complete=True)


@case(
    "export_rerun_subset",
    "export one classifier in one format over a full earlier export",
    "ffl export --classifier sub0 --format onnx   (models/export exists)",
    "exit 0; every file in models/export whole, model.json readable",
    needs={"base"},
    weight=8,
)
def _(c: Ctx):
    ws = c.ws("base")
    if c.expect_ok(c.ffl("export", "--classifier", "sub0", "--format", "onnx", cwd=ws)):
        c.problems += export_problems(ws / "models" / "export", complete=False)
        c.check((ws / "models" / "export" / "sub0.onnx").exists(), "sub0.onnx missing")


def first_file_in(d: Path) -> Callable[[], bool]:
    return lambda: d.is_dir() and any(d.iterdir())


def staging_in(d: Path) -> Callable[[], bool]:
    """True once a hidden work file or folder (`.name.new-PID`, `*.tmp`) appears in d: the command is writing."""
    return lambda: d.is_dir() and any(leftovers(d))


def leftovers(d: Path) -> list[str]:
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if re.search(r"\.(new|old)-\d+$|\.tmp|\.part$|^tmp", p.name))


@case(
    "export_sigterm_midway",
    "SIGTERM to ffl 1 s after it starts writing (its work folder appears), then the same command",
    "ffl export --out newexp; kill PID; rerun",
    "exit 130 with one error line; no half-written newexp/ nor work folder left; the rerun completes it",
    needs={"base"},
    weight=20,
)
def _(c: Ctx):
    ws = c.ws("base")
    p = c.spawn("export", "--out", "newexp", cwd=ws)
    if c.interrupt_after(p, staging_in(ws), signal.SIGTERM, group=False, wait_s=60, extra_s=1, what="a work folder"):
        c.expect_interrupt(c.finish(p, 60, "interrupted"))
    else:
        c.finish(p, 60, "run")
    c.problems += [f"after the interrupt: {m}" for m in export_problems(ws / "newexp", complete=False)]
    c.check(not leftovers(ws), f"left after the interrupt: {leftovers(ws)}")
    if c.expect_ok(c.ffl("export", "--out", "newexp", cwd=ws, label="rerun"), "rerun"):
        c.problems += export_problems(ws / "newexp", complete=True)
        c.check(not leftovers(ws), f"left after the rerun: {leftovers(ws)}")


@case(
    "export_sigterm_after_writing",
    "SIGTERM to ffl the moment its exported files are in place (before it exits)",
    "ffl export --out newexp; kill PID once newexp/model.json exists",
    "exit 0 (it had finished) or 130 with one error line; never a silent death by the signal; the files whole",
    needs={"base"},
    weight=12,
)
def _(c: Ctx):
    ws = c.ws("base")
    p = c.spawn("export", "--out", "newexp", cwd=ws)
    done = (ws / "newexp" / "model.json").exists
    if c.interrupt_after(p, done, signal.SIGTERM, group=False, wait_s=60, what="newexp/model.json"):
        r = c.finish(p, 60, "terminated")
        if r.rc != 0:
            c.expect_interrupt(r, "terminated")
    else:
        c.expect_ok(c.finish(p, 60, "run"))
    c.problems += export_problems(ws / "newexp", complete=True)
    c.check(not leftovers(ws), f"left: {leftovers(ws)}")


@case(
    "export_sigint_over_existing",
    "Ctrl-C 1 s after an export that rewrites models/export starts writing",
    "ffl export; ^C   (models/export exists)",
    "exit 130 with one error line; models/export still holds 7 whole files; no work folder left in models/",
    needs={"base"},
    weight=12,
)
def _(c: Ctx):
    ws = c.ws("base")
    p = c.spawn("export", cwd=ws)
    if c.interrupt_after(
        p, staging_in(ws / "models"), signal.SIGINT, group=True, wait_s=60, extra_s=1, what="a work folder"
    ):
        c.expect_interrupt(c.finish(p, 60, "interrupted"))
    else:
        c.finish(p, 60, "run")
    c.problems += export_problems(ws / "models" / "export", complete=True)
    c.check(not leftovers(ws / "models"), f"left in models/: {leftovers(ws / 'models')}")


@case(
    "export_out_deleted_midway",
    "the --out folder's parent deleted while the export writes",
    "ffl export --out outer/gone; rm -rf outer (once it appears)",
    "a clean end: exit 0 with outer/gone complete, or one error line naming outer/gone (exit 1)",
    needs={"base"},
    weight=12,
)
def _(c: Ctx):
    ws = c.ws("base")
    p = c.spawn("export", "--out", "outer/gone", cwd=ws)
    if wait_until(staging_in(ws / "outer"), 60, p) and p.alive():
        shutil.rmtree(ws / "outer", ignore_errors=True)
        c.note("outer/ deleted while the export was writing")
    else:
        c.problems.append("could not delete outer/ while the export ran")
    r = c.finish(p, 90)
    if c.expect_clean(r, codes=(1, 2), names=["gone", "outer"]):
        c.problems += export_problems(ws / "outer" / "gone", complete=True)


# ----- ffl predict -----------------------------------------------------------------------------


def predicted(r: Result) -> list[dict]:
    rows = json_lines(r.out)
    return rows if rows is not None else []


@case(
    "predict_huge_declared_png",
    "a 100-byte PNG whose header claims 100000x20000 pixels, beside a good image",
    "ffl predict good.png huge.png --json",
    "exit 0 within a minute; good.png predicted; huge.png named on stderr in one line and skipped",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    huge_declared_png(ws / "huge.png")
    r = c.ffl("predict", "good.png", "huge.png", "--json", cwd=ws, timeout=90)
    if c.expect_ok(r):
        c.check(
            [x.get("file") for x in predicted(r)] == ["good.png"], f"predicted: {[x.get('file') for x in predicted(r)]}"
        )
        c.check("huge.png" in r.err, "huge.png is not named on stderr")


@case(
    "predict_only_huge_declared_png",
    "only the 2-gigapixel-header PNG",
    "ffl predict huge.png",
    "exit 2, one error line; huge.png named on stderr; no memory blow-up",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    huge_declared_png(ws / "huge.png")
    r = c.ffl("predict", "huge.png", cwd=ws, timeout=90)
    c.expect_error(r, codes=(2,), names=["huge.png"], anywhere=True)


@case(
    "predict_truncated_png",
    "a PNG cut to 60% of its bytes, beside a good image",
    "ffl predict good.png cut.png --json",
    "exit 0; good.png predicted; cut.png named on stderr and skipped (not predicted from half an image)",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(ws / "cut.png")
    truncate(ws / "cut.png", 0.6)
    r = c.ffl("predict", "good.png", "cut.png", "--json", cwd=ws)
    if c.expect_ok(r):
        c.check(
            [x.get("file") for x in predicted(r)] == ["good.png"], f"predicted: {[x.get('file') for x in predicted(r)]}"
        )
        c.check("cut.png" in r.err, "cut.png is not named on stderr")


@case(
    "predict_text_named_jpg",
    "a text file named notes.jpg, beside a good image",
    "ffl predict good.png notes.jpg --json",
    "exit 0; good.png predicted; notes.jpg named on stderr and skipped",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    (ws / "notes.jpg").write_text("shopping list: milk\n")
    r = c.ffl("predict", "good.png", "notes.jpg", "--json", cwd=ws)
    if c.expect_ok(r):
        c.check(len(predicted(r)) == 1, f"{len(predicted(r))} predictions, expected 1")
        c.check("notes.jpg" in r.err, "notes.jpg is not named on stderr")


@case(
    "predict_empty_folder",
    "a folder with no images",
    "mkdir empty; ffl predict empty",
    "exit 2, one error line naming empty",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    (ws / "empty").mkdir()
    c.expect_error(c.ffl("predict", "empty", cwd=ws), names=["empty"])


@case(
    "predict_repeated_inputs",
    "the same image given 3 ways, and a folder plus a file inside it",
    "ffl predict red.png red.png ./red.png imgs imgs/red2.png --json",
    "exit 0 with 2 predictions (one per image), or a one-line refusal",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "red.png")
    make_rgb(ws / "imgs" / "red2.png", seed=1)
    r = c.ffl("predict", "red.png", "red.png", "./red.png", "imgs", "imgs/red2.png", "--json", cwd=ws)
    if c.expect_clean(r, codes=(2,), names=["red"]):
        files = [x.get("file") for x in predicted(r)]
        c.check(len(files) == 2, f"{len(files)} predictions for 2 images: {files}")


@case(
    "predict_symlink_loop",
    "a folder holding a symlink to itself",
    "ln -s . imgs/loop; ffl predict imgs --json",
    "ends within a minute, exit 0, the one image predicted once",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "imgs" / "a.png")
    (ws / "imgs" / "loop").symlink_to(".")
    r = c.ffl("predict", "imgs", "--json", cwd=ws, timeout=60)
    if c.expect_ok(r):
        c.check(len(predicted(r)) == 1, f"{len(predicted(r))} predictions, expected 1")


@case(
    "predict_dangling_symlink",
    "a symlink to a file that does not exist, beside a good image",
    "ln -s nothere.png dangling.png; ffl predict good.png dangling.png --json",
    "exit 0; good.png predicted; dangling.png named on stderr",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    (ws / "dangling.png").symlink_to("nothere.png")
    r = c.ffl("predict", "good.png", "dangling.png", "--json", cwd=ws)
    if c.expect_ok(r):
        c.check(len(predicted(r)) == 1, f"{len(predicted(r))} predictions, expected 1")
        c.check("dangling.png" in r.err, "dangling.png is not named on stderr")


@case(
    "predict_top_zero",
    "--top 0",
    "ffl predict good.png --top 0",
    "exit 2, one error line naming --top",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    c.expect_error(c.ffl("predict", "good.png", "--top", "0", cwd=ws), names=["--top"])


@case(
    "predict_top_beyond_classes",
    "--top 1000 with 10 classes",
    "ffl predict good.png --top 1000 --json",
    "exit 0, the 10 classes listed",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    r = c.ffl("predict", "good.png", "--top", "1000", "--json", cwd=ws)
    if c.expect_ok(r):
        rows = predicted(r)
        c.check(
            len(rows) == 1 and len(rows[0].get("top", [])) == 10,
            f"top lists {[len(x.get('top', [])) for x in rows]} classes",
        )


@case(
    "predict_unknown_classifier",
    "a classifier the model does not have",
    "ffl predict good.png --classifier sub7",
    "exit 2, one error line naming sub7",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    c.expect_error(c.ffl("predict", "good.png", "--classifier", "sub7", cwd=ws), names=["sub7"])


@case(
    "predict_missing_model",
    "predict where nothing was trained",
    "ffl predict good.png   (no models/model.pt)",
    "exit 2, one error line naming models/model.pt",
    needs={"plain"},
)
def _(c: Ctx):
    ws = c.ws("plain")
    make_rgb(ws / "good.png")
    c.expect_error(c.ffl("predict", "good.png", cwd=ws), names=["model.pt"])


@case(
    "predict_truncated_model",
    "models/model.pt cut to half its size",
    "truncate models/model.pt; ffl predict good.png",
    "exit 2, one error line naming models/model.pt",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    truncate(ws / "models" / "model.pt")
    c.expect_error(c.ffl("predict", "good.png", cwd=ws), names=["model.pt"])


@case(
    "predict_odd_images",
    "8 odd but valid images in a folder: grey, RGBA, palette, 1x1, 16-bit, 1-bit, CMYK JPEG, 1x500",
    "ffl predict odd --json",
    "exit 0, 8 predictions",
    needs={"base"},
)
def _(c: Ctx):
    from PIL import Image

    ws = c.ws("base")
    d = ws / "odd"
    d.mkdir()
    rgb = make_rgb(ws / "src.png")
    base = Image.open(rgb).convert("RGB")
    base.convert("L").save(d / "grey.png")
    base.convert("RGBA").save(d / "rgba.png")
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one_pixel.png")
    Image.new("I;16", (32, 32), 40000).save(d / "sixteen.png")
    base.convert("1").save(d / "bw.png")
    base.convert("CMYK").save(d / "cmyk.jpg")
    base.resize((1, 500)).save(d / "tall.png")
    r = c.ffl("predict", "odd", "--json", cwd=ws)
    if c.expect_ok(r):
        missing = sorted({p.name for p in d.iterdir()} - {Path(x.get("file", "")).name for x in predicted(r)})
        c.check(not missing, f"not predicted: {missing}")


@case(
    "predict_gif_in_folder",
    "a folder holding an animated GIF and a PNG",
    "ffl predict imgs --json   (imgs: a.png, anim.gif)",
    "exit 0; both predicted, or the GIF named on stderr (a readable image is not dropped silently)",
    needs={"base"},
)
def _(c: Ctx):
    from PIL import Image

    ws = c.ws("base")
    a = make_rgb(ws / "imgs" / "a.png")
    frame = Image.open(a).convert("RGB")
    frame.save(ws / "imgs" / "anim.gif", save_all=True, append_images=[frame.rotate(90)], duration=100)
    r = c.ffl("predict", "imgs", "--json", cwd=ws)
    if c.expect_ok(r):
        files = {Path(x.get("file", "")).name for x in predicted(r)}
        c.check("a.png" in files, f"predicted: {sorted(files)}")
        c.check("anim.gif" in files or "anim.gif" in r.err, "anim.gif silently left out (neither predicted nor named)")


@case(
    "predict_unreadable_file",
    "an image without read permission beside a good one (run without root's capabilities)",
    "chmod 000 secret.png; ffl predict good.png secret.png --json",
    "exit 0; good.png predicted; secret.png named on stderr",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    make_rgb(ws / "secret.png").chmod(0)
    r = c.ffl("predict", "good.png", "secret.png", "--json", cwd=ws, unpriv=True)
    if c.expect_ok(r):
        c.check(len(predicted(r)) == 1, f"{len(predicted(r))} predictions, expected 1")
        c.check("secret.png" in r.err, "secret.png is not named on stderr")


@case(
    "predict_fifo_in_folder",
    "a named pipe called pipe.png in the folder beside an image",
    "mkfifo imgs/pipe.png; ffl predict imgs --json",
    "ends within a minute (no hang), exit 0, the image predicted, pipe.png skipped",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "imgs" / "a.png")
    os.mkfifo(ws / "imgs" / "pipe.png")
    r = c.ffl("predict", "imgs", "--json", cwd=ws, timeout=60)
    if c.expect_ok(r):
        c.check(len(predicted(r)) == 1, f"{len(predicted(r))} predictions, expected 1")


@case(
    "predict_json_with_bad_file",
    "--json with one good and one unreadable file",
    "ffl predict good.png bad.png --json",
    "exit 0; stdout is only JSON lines (one); bad.png named on stderr",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    (ws / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    r = c.ffl("predict", "good.png", "bad.png", "--json", cwd=ws)
    if c.expect_ok(r):
        rows = json_lines(r.out)
        c.check(rows is not None and len(rows) == 1, f"stdout is not one JSON line: {r.out[:120]!r}")
        c.check("bad.png" in r.err, "bad.png is not named on stderr")


@case(
    "predict_missing_input",
    "a file name that does not exist (a typo) beside a good image",
    "ffl predict good.png nothere.png",
    "good.png predicted and nothere.png named (exit 0), or a one-line refusal naming nothere.png (exit 2)",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "good.png")
    r = c.ffl("predict", "good.png", "nothere.png", cwd=ws)
    if c.expect_clean(r, codes=(2,), names=["nothere.png"]):
        c.check("nothere.png" in r.err, "nothere.png is not named on stderr")


@case(
    "predict_90_megapixel_image",
    "a real 10000x9000 PNG beside a good image (README: Pillow's note on a 90-megapixel image is one line)",
    "ffl predict good.png big.png --json",
    "exit 0; good.png predicted; big.png predicted or named and skipped, in at most one 'warning: ' line",
    needs={"base"},
    weight=20,
)
def _(c: Ctx):
    from PIL import Image

    ws = c.ws("base")
    make_rgb(ws / "good.png")
    Image.new("RGB", (10000, 9000), (30, 90, 150)).save(ws / "big.png", compress_level=1)
    r = c.ffl("predict", "good.png", "big.png", "--json", cwd=ws, timeout=120)
    if c.expect_ok(r):
        files = [x.get("file") for x in predicted(r)]
        c.check("good.png" in files, f"predicted: {files}")
        if "big.png" not in files:
            c.check("big.png" in r.err, "big.png neither predicted nor named on stderr")
        c.check(len([ln for ln in r.err.splitlines() if ln.strip()]) <= 1, f"stderr has several lines: {r.err[:200]!r}")


@case(
    "predict_folder_mixed_files",
    "a folder with text, JSON, a hidden image and a sub-folder",
    "ffl predict imgs --json   (a.png, notes.txt, data.json, .hidden.png, sub/b.jpg)",
    "exit 0; a.png and sub/b.jpg predicted; no traceback",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "imgs" / "a.png")
    make_rgb(ws / "imgs" / ".hidden.png", seed=2)
    from PIL import Image

    (ws / "imgs" / "sub").mkdir()
    Image.open(ws / "imgs" / "a.png").convert("RGB").save(ws / "imgs" / "sub" / "b.jpg")
    (ws / "imgs" / "notes.txt").write_text("hello\n")
    (ws / "imgs" / "data.json").write_text("{}\n")
    r = c.ffl("predict", "imgs", "--json", cwd=ws)
    if c.expect_ok(r):
        files = {Path(x.get("file", "")).name for x in predicted(r)}
        c.check({"a.png", "b.jpg"} <= files, f"predicted: {sorted(files)}")


@case(
    "predict_uppercase_and_no_extension",
    "images named IMG.PNG and noext given explicitly",
    "ffl predict IMG.PNG noext --json",
    "exit 0, 2 predictions",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    make_rgb(ws / "IMG.PNG")
    (ws / "noext").write_bytes((ws / "IMG.PNG").read_bytes())
    r = c.ffl("predict", "IMG.PNG", "noext", "--json", cwd=ws)
    if c.expect_ok(r):
        c.check(len(predicted(r)) == 2, f"{len(predicted(r))} predictions, expected 2")


# ----- ffl tune --------------------------------------------------------------------------------


@case(
    "tune_resume_and_fresh",
    "--resume and --fresh together",
    "ffl tune --resume --fresh",
    "exit 2, one error line naming --resume/--fresh; nothing started",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("tune", "--resume", "--fresh", cwd=ws), names=["--resume", "--fresh"])
    c.check(not (ws / "tune").exists(), "tune/ was created")


@case(
    "tune_out_is_a_file",
    "--out names an existing regular file",
    "echo x > afile; ffl tune --out afile",
    "exit 2, one error line naming afile; afile untouched",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    (ws / "afile").write_text("keep me\n")
    c.expect_error(c.ffl("tune", "--out", "afile", cwd=ws), names=["afile"])
    c.check((ws / "afile").read_text() == "keep me\n", "afile was changed")


@case(
    "tune_zero_trials",
    "--trials 0",
    "ffl tune --trials 0",
    "exit 2, one error line naming the trials",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("tune", "--trials", "0", cwd=ws), names=["trials"])


@case(
    "tune_negative_trials",
    "--trials -3",
    "ffl tune --trials -3",
    "exit 2, one error line naming the trials",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("tune", "--trials", "-3", cwd=ws), names=["trials"])


@case(
    "tune_million_trials",
    "--trials 1000000 (README: more than 100,000 refused)",
    "ffl tune --trials 1000000",
    "exit 2, one error line naming the trials",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("tune", "--trials", "1000000", cwd=ws), names=["trials"])


@case(
    "tune_space_low_above_high",
    "a search dimension whose low is above its high",
    "ffl tune -S tune.space.train.lr.low=0.5   (high 0.3)",
    "exit 2, one error line naming tune.space.train.lr",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("tune", "-S", "tune.space.train.lr.low=0.5", cwd=ws), names=["tune.space.train.lr"])


@case(
    "tune_unknown_preset",
    "--preset of a table that does not exist",
    "ffl tune --preset nosuch/a --tables tiny_tables.yaml",
    "exit 2, one error line naming nosuch",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("tune", "--preset", "nosuch/a", *RT, cwd=ws), names=["nosuch"])


@case(
    "tune_preset_without_row",
    "--preset with the table but no /ROW",
    "ffl tune --preset tiny --tables tiny_tables.yaml",
    "exit 2, one error line naming --preset (TABLE/ROW)",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    c.expect_error(c.ffl("tune", "--preset", "tiny", *RT, cwd=ws), names=["--preset", "tiny", "row"])


@case(
    "tune_broken_params_file",
    "-p names a file that is not valid YAML",
    "ffl tune -p broken.yaml",
    "exit 2, one error line naming broken.yaml",
    needs={"base"},
)
def _(c: Ctx):
    ws = c.ws("base")
    (ws / "broken.yaml").write_text("train: {lr: [0.1\nseed: 0\n")
    c.expect_error(c.ffl("tune", "-p", "broken.yaml", cwd=ws), names=["broken.yaml"])


@case(
    "tune_rerun_over_finished_search",
    "plain ffl tune again where a search finished",
    "ffl tune   (tune/ holds a finished search)",
    "exit 2, one error line naming tune/ray/search (README: an earlier search is there); tune/ results unchanged",
    needs={"tuned"},
    weight=10,
)
def _(c: Ctx):
    ws = c.ws("tuned")
    results = {k: v for k, v in snap(ws / "tune").items() if not k.startswith("ray")}
    c.expect_error(c.ffl("tune", cwd=ws, timeout=120), names=["tune/ray/search", "earlier search"])
    after = {k: v for k, v in snap(ws / "tune").items() if not k.startswith("ray")}
    c.check(after == results, "tune/ results changed")


@case(
    "tune_sigint_then_resume",
    "Ctrl-C after the first finished trial; --resume with another -S; then --resume",
    "ffl tune --trials 3 -S train.epochs=15 ...; ^C; ffl tune --resume ... -S train.momentum=0.8; "
    "ffl tune --resume ...",
    "130 + one error line; the mismatched resume exit 2 naming train.momentum; "
    "the resume exit 0 with 3 trials in trials.csv",
    needs={"base"},
    weight=90,
)
def _(c: Ctx):
    ws = c.ws("base")
    p = c.spawn("tune", *TUNE_LONG, cwd=ws)
    if c.interrupt_after(
        p, lambda: "[tune] trial" in p.stdout(), signal.SIGINT, group=True, wait_s=120, what="a finished trial"
    ):
        r = c.finish(p, 90, "interrupted")
        c.expect_interrupt(r)
        c.check("interrupted" in r.err, "no 'search interrupted' line")
    else:
        c.finish(p, 90, "run")
    r = c.ffl("tune", *TUNE_LONG, "--resume", "-S", "train.momentum=0.8", cwd=ws, timeout=120, label="resume, other -S")
    c.expect_error(r, names=["train.momentum"], label="resume, other -S")
    r = c.ffl("tune", *TUNE_LONG, "--resume", cwd=ws, timeout=240, label="resume")
    if c.expect_ok(r, "resume"):
        csv = ws / "tune" / "trials.csv"
        rows = len(csv.read_text().splitlines()) - 1 if csv.exists() else 0
        c.check(rows == 3, f"trials.csv has {rows} trials after the resume, expected 3")


def tune_results(ws: Path) -> dict[str, str]:
    return {k: v for k, v in snap(ws / "tune").items() if not k.startswith("ray")}


@case(
    "tune_sigterm_fresh_keeps_results",
    "SIGTERM to a --fresh search after its first finished trial, over a finished search's results",
    "ffl tune --fresh --trials 3 -S train.epochs=15 ...; kill PID after the first trial",
    "exit 130 with one error line; tune/summary.json, trials.csv, best_* of the finished search unchanged",
    needs={"tuned"},
    weight=30,
)
def _(c: Ctx):
    ws = c.ws("tuned")
    results = tune_results(ws)
    p = c.spawn("tune", "--fresh", *TUNE_LONG, cwd=ws)
    trial = lambda: "[tune] trial" in p.stdout()
    if c.interrupt_after(p, trial, signal.SIGTERM, group=False, wait_s=120, what="a finished trial"):
        c.expect_interrupt(c.finish(p, 90, "interrupted"))
    else:
        c.finish(p, 90, "run")
    c.check(tune_results(ws) == results, "the finished search's results in tune/ changed")


def tune_at_ray_start(c: Ctx, sig: int, group: bool):
    ws = c.ws("tuned")
    results = tune_results(ws)
    p = c.spawn("tune", "--fresh", *TUNE_LONG, cwd=ws)
    if c.interrupt_after(p, ray_starting(p), sig, group, wait_s=90, what="Ray's GCS server"):
        c.expect_interrupt(c.finish(p, 90, "interrupted"))
    else:
        c.finish(p, 90, "run")
    c.check(tune_results(ws) == results, "the finished search's results in tune/ changed")


@case(
    "tune_sigint_while_ray_starts",
    "Ctrl-C (SIGINT to the group) while a --fresh search's local Ray starts",
    "ffl tune --fresh --trials 3 ...; ^C once Ray's gcs_server runs",
    "exit 130 with one error line; the earlier results in tune/ unchanged",
    needs={"tuned"},
    weight=12,
)
def _(c: Ctx):
    tune_at_ray_start(c, signal.SIGINT, group=True)


@case(
    "tune_sigterm_while_ray_starts",
    "SIGTERM to ffl alone while a --fresh search's local Ray starts",
    "ffl tune --fresh --trials 3 ...; kill PID once Ray's gcs_server runs",
    "exit 130 with one error line (README: Ctrl-C or SIGTERM -> 130); the earlier results in tune/ unchanged",
    needs={"tuned"},
    weight=12,
)
def _(c: Ctx):
    tune_at_ray_start(c, signal.SIGTERM, group=False)


@case(
    "tune_resume_damaged_search",
    "--resume where every file of tune/ray/search is garbage",
    "for f in tune/ray/search/*: echo garbage > f; ffl tune --resume",
    "exit 2, one error line naming tune/ray/search (cannot be resumed); tune/ results unchanged",
    needs={"tuned"},
    weight=10,
)
def _(c: Ctx):
    ws = c.ws("tuned")
    for f in (ws / "tune" / "ray" / "search").iterdir():
        if f.is_file():
            f.write_bytes(b"\x00garbage\n")
    results = {k: v for k, v in snap(ws / "tune").items() if not k.startswith("ray")}
    c.expect_error(c.ffl("tune", "--resume", cwd=ws, timeout=120), names=["tune/ray/search"])
    after = {k: v for k, v in snap(ws / "tune").items() if not k.startswith("ray")}
    c.check(after == results, "tune/ results changed")


@case(
    "tune_resume_without_search",
    "--resume where no search ever ran",
    "ffl tune --resume   (no tune/)",
    "a one-line refusal naming the search folder (exit 2), or a new search that finishes (exit 0)",
    needs={"base"},
    weight=25,
)
def _(c: Ctx):
    ws = c.ws("base")
    r = c.ffl("tune", "--resume", cwd=ws, timeout=180)
    if c.expect_clean(r, codes=(2,), names=["tune/ray", "search", "--resume"]):
        c.check((ws / "tune" / "summary.json").exists(), "exit 0 but no tune/summary.json")


@case(
    "tune_out_readonly",
    "--out an existing read-only folder (run without root's capabilities)",
    "mkdir ro; chmod 555 ro; ffl tune --out ro",
    "exit 1 or 2 before any trial, one error line naming ro",
    needs={"base"},
    weight=10,
)
def _(c: Ctx):
    ws = c.ws("base")
    (ws / "ro").mkdir()
    make_readonly(ws / "ro")
    c.expect_error(c.ffl("tune", "--out", "ro", cwd=ws, unpriv=True, timeout=120), codes=(1, 2), names=["ro"])


@case(
    "tune_without_prepared_data",
    "tune in a folder with params.yaml but no data/prepared",
    "ffl tune   (no data/prepared)",
    "a one-line refusal naming data/prepared (exit 2), or a search that prepares and finishes (exit 0)",
    needs={"plain"},
    weight=25,
)
def _(c: Ctx):
    ws = c.ws("plain")
    r = c.ffl("tune", cwd=ws, timeout=180)
    if c.expect_clean(r, codes=(2,), names=["data/prepared", "prepare"]):
        c.check((ws / "tune" / "summary.json").exists(), "exit 0 but no tune/summary.json")


@case(
    "tune_out_symlink",
    "--out is a symlink to a folder elsewhere",
    "ln -s real link; ffl tune --out link",
    "exit 0; real/ holds summary.json and trials.csv",
    needs={"base"},
    weight=25,
)
def _(c: Ctx):
    ws = c.ws("base")
    (ws / "real").mkdir()
    (ws / "link").symlink_to("real")
    if c.expect_ok(c.ffl("tune", "--out", "link", cwd=ws, timeout=180)):
        c.check(
            (ws / "real" / "summary.json").exists() and (ws / "real" / "trials.csv").exists(), "real/ lacks the results"
        )


@case(
    "tune_out_deleted_midway",
    "the --out folder deleted after the first finished trial",
    "ffl tune --out gone --trials 3 -S train.epochs=15 ...; rm -rf gone",
    "a clean end: one error line naming gone (exit 1), or exit 0 with gone/ holding every result",
    needs={"base"},
    weight=40,
)
def _(c: Ctx):
    ws = c.ws("base")
    p = c.spawn("tune", "--out", "gone", *TUNE_LONG, cwd=ws)
    if wait_until(lambda: "[tune] trial" in p.stdout(), 120, p):
        shutil.rmtree(ws / "gone", ignore_errors=True)
        c.note("gone/ deleted")
    r = c.finish(p, 240)
    if c.expect_clean(r, codes=(1, 2), names=["gone"]):
        c.check((ws / "gone" / "summary.json").exists(), "exit 0 but gone/summary.json missing")


# ----- DDP training (train.processes=2) --------------------------------------------------------

DDP = ["train", "-S", "train.processes=2"]


@case(
    "ddp_batch_not_divisible",
    "a global batch the 2 processes cannot split",
    "ffl train -S train.processes=2 -S train.batch_size=15",
    "exit 2, one error line naming train.batch_size; no models/ written",
    needs={"prepared"},
)
def _(c: Ctx):
    ws = c.ws("prepared")
    c.expect_error(c.ffl(*DDP, "-S", "train.batch_size=15", cwd=ws), names=["train.batch_size"])
    c.check(not (ws / "models").exists(), "models/ was written")


@case(
    "ddp_zero_processes",
    "train.processes=0",
    "ffl train -S train.processes=0",
    "exit 2, one error line naming train.processes",
    needs={"prepared"},
)
def _(c: Ctx):
    ws = c.ws("prepared")
    c.expect_error(c.ffl("train", "-S", "train.processes=0", cwd=ws), names=["train.processes"])


@case(
    "ddp_processes_not_a_number",
    "train.processes=two",
    "ffl train -S train.processes=two",
    "exit 2, one error line naming train.processes",
    needs={"prepared"},
)
def _(c: Ctx):
    ws = c.ws("prepared")
    c.expect_error(c.ffl("train", "-S", "train.processes=two", cwd=ws), names=["train.processes"])


@case(
    "ddp_conflicting_repeats",
    "train.processes given twice with different values",
    "ffl train -S train.processes=2 -S train.processes=1",
    "a one-line refusal naming train.processes (exit 2), or one run with the last value (exit 0)",
    needs={"prepared"},
    weight=10,
)
def _(c: Ctx):
    ws = c.ws("prepared")
    r = c.ffl("train", "-S", "train.processes=2", "-S", "train.processes=1", cwd=ws)
    if c.expect_clean(r, codes=(2,), names=["train.processes"]):
        c.check((ws / "models" / "model.pt").exists(), "exit 0 but no models/model.pt")


@case(
    "ddp_repeated_same_override",
    "train.processes=2 given twice",
    "ffl train -S train.processes=2 -S train.processes=2",
    "exit 0, one 2-process run (models/model.pt), or a one-line refusal",
    needs={"prepared"},
    weight=12,
)
def _(c: Ctx):
    ws = c.ws("prepared")
    r = c.ffl(*DDP, "-S", "train.processes=2", cwd=ws, timeout=120)
    if c.expect_clean(r, codes=(2,), names=["train.processes"]):
        c.check((ws / "models" / "model.pt").exists(), "exit 0 but no models/model.pt")
        c.check(dvclive_epochs(ws) == 1, f"dvclive logged {dvclive_epochs(ws)} epochs, expected 1")


def ddp_interrupted(c: Ctx, sig: int, group: bool, other_config_first: bool):
    ws = c.ws("prepared")
    p = c.spawn(*DDP, *LONG, cwd=ws)
    ckpt = ws / "checkpoints" / "last.pt"
    if c.interrupt_after(p, ckpt.exists, sig, group, wait_s=90, extra_s=1, what="checkpoints/last.pt"):
        c.expect_interrupt(c.finish(p, 60, "interrupted"))
    else:
        c.finish(p, 60, "run")
    if other_config_first:
        r = c.ffl("train", "-S", "train.processes=1", *LONG, cwd=ws, label="rerun with 1 process")
        c.expect_error(r, names=["train.processes"], label="rerun with 1 process")
    r = c.ffl(*DDP, *LONG, cwd=ws, timeout=150, label="rerun")
    if c.expect_ok(r, "rerun"):
        c.check(
            dvclive_epochs(ws) == N_LONG,
            f"dvclive logged {dvclive_epochs(ws)} epochs, expected {N_LONG} (none lost or twice)",
        )
        c.check(not ckpt.exists(), "checkpoints/last.pt left after a finished run")
        c.check((ws / "models" / "model.pt").exists(), "no models/model.pt")


@case(
    "ddp_sigint_resume",
    "Ctrl-C to the group after epoch 1 of a 30-epoch 2-process run; rerun with 1 process; rerun",
    "ffl train -S train.processes=2 -S train.epochs=30; ^C; ffl train -S train.processes=1 ...; "
    "ffl train -S train.processes=2 ...",
    "130 + one error line; the 1-process rerun exit 2 naming train.processes; "
    "the rerun resumes, exit 0, 30 epochs logged once",
    needs={"prepared"},
    weight=45,
)
def _(c: Ctx):
    ddp_interrupted(c, signal.SIGINT, group=True, other_config_first=True)


@case(
    "ddp_sigterm_resume",
    "SIGTERM to ffl alone after epoch 1 of a 30-epoch 2-process run, then the same command",
    "ffl train -S train.processes=2 -S train.epochs=30; kill PID; rerun",
    "exit 130 with one error line; the rerun resumes, exit 0, 30 epochs logged once",
    needs={"prepared"},
    weight=40,
)
def _(c: Ctx):
    ddp_interrupted(c, signal.SIGTERM, group=False, other_config_first=False)


@case(
    "ddp_kill_one_process",
    "SIGKILL to one of the 2 training processes after epoch 1, then the same command",
    "ffl train -S train.processes=2 -S train.epochs=30; kill -9 <a worker>; rerun",
    "exit 1, ending in one error line naming the training process (README: the others' 'process N: ...' lines may "
    "come before it); the rerun resumes, exit 0, 30 epochs logged once",
    needs={"prepared"},
    weight=40,
)
def _(c: Ctx):
    ws = c.ws("prepared")
    p = c.spawn(*DDP, *LONG, cwd=ws)
    if wait_until((ws / "checkpoints" / "last.pt").exists, 90, p) and p.alive():
        time.sleep(1)
        workers = [k for k in children(p) if "pipeline" in cmdline(k)]
        if c.check(workers, "no worker process found"):
            os.kill(workers[-1].pid, signal.SIGKILL)
            c.note(f"killed 1 of {len(workers)} workers")
        c.expect_error(
            c.finish(p, 90, "killed worker"),
            codes=(1,),
            names=["training process"],
            label="killed worker",
            process_lines=True,
        )
    else:
        c.problems.append("the run never wrote its first checkpoint")
        c.finish(p, 60)
    r = c.ffl(*DDP, *LONG, cwd=ws, timeout=150, label="rerun")
    if c.expect_ok(r, "rerun"):
        c.check(dvclive_epochs(ws) == N_LONG, f"dvclive logged {dvclive_epochs(ws)} epochs, expected {N_LONG}")


@case(
    "ddp_garbage_checkpoint",
    "checkpoints/last.pt is garbage",
    "echo garbage > checkpoints/last.pt; ffl train -S train.processes=2",
    "exit 2, one error line naming checkpoints/last.pt (unreadable checkpoint)",
    needs={"prepared"},
)
def _(c: Ctx):
    ws = c.ws("prepared")
    (ws / "checkpoints").mkdir()
    (ws / "checkpoints" / "last.pt").write_bytes(b"garbage\x00\x01")
    c.expect_error(c.ffl(*DDP, cwd=ws, timeout=90), names=["checkpoints/last.pt", "checkpoint"])


@case(
    "ddp_foreign_checkpoint",
    "checkpoints/last.pt is a torch.save of someone else's dict",
    "torch.save({'x': 1}, 'checkpoints/last.pt'); ffl train -S train.processes=2",
    "exit 2, one error line naming the checkpoint (not a checkpoint of this project)",
    needs={"prepared"},
)
def _(c: Ctx):
    import torch

    ws = c.ws("prepared")
    (ws / "checkpoints").mkdir()
    torch.save({"x": 1}, ws / "checkpoints" / "last.pt")
    c.expect_error(c.ffl(*DDP, cwd=ws, timeout=90), names=["checkpoints/last.pt", "checkpoint"])


@case(
    "ddp_two_in_one_folder",
    "a second 2-process training started in the folder of a running one",
    "ffl train -S train.processes=2 -S train.epochs=80 &  ffl train -S train.processes=2 -S train.epochs=80",
    "the second: one error line naming checkpoints (another training is running), exit 1 or 2; the first exits 0",
    needs={"prepared"},
    weight=40,
)
def _(c: Ctx):
    ws = c.ws("prepared")
    long = ["-S", "train.epochs=80"]
    p = c.spawn(*DDP, *long, cwd=ws)
    wait_until((ws / "checkpoints" / "last.pt").exists, 90, p)
    r = c.ffl(*DDP, *long, cwd=ws, timeout=150, label="second")
    c.expect_error(r, codes=(1, 2), names=["checkpoints", "another training"], label="second")
    c.expect_ok(c.finish(p, 150, "first"), "first")
    c.check(dvclive_epochs(ws) == 80, f"dvclive logged {dvclive_epochs(ws)} epochs, expected 80")


@case(
    "ddp_two_folders_at_once",
    "two 2-process trainings at the same time in two folders (rendezvous ports)",
    "(cd ws1 && ffl train -S train.processes=2 -S train.epochs=10) & (cd ws2 && same)",
    "both exit 0 with their model",
    needs={"prepared"},
    weight=30,
)
def _(c: Ctx):
    a, b = c.ws("prepared", "ws1"), c.ws("prepared", "ws2")
    pa = c.spawn(*DDP, "-S", "train.epochs=10", cwd=a)
    pb = c.spawn(*DDP, "-S", "train.epochs=10", cwd=b)
    for label, p, ws in (("ws1", pa, a), ("ws2", pb, b)):
        if c.expect_ok(c.finish(p, 150, label), label):
            c.check((ws / "models" / "model.pt").exists(), f"{label}: no models/model.pt")


@case(
    "ddp_readonly_models",
    "models/ and its files read-only (run without root's capabilities)",
    "chmod -R a-w models; ffl train -S train.processes=2",
    "exit 1 or 2, one error line naming models; the old models/model.pt intact",
    needs={"base"},
    weight=15,
)
def _(c: Ctx):
    ws = c.ws("base")
    before = snap(ws / "models" / "model.pt")
    make_readonly(ws / "models")
    c.expect_error(c.ffl(*DDP, cwd=ws, unpriv=True, timeout=120), codes=(1, 2), names=["models"])
    c.check(snap(ws / "models" / "model.pt") == before, "models/model.pt changed")


@case(
    "ddp_without_prepared_data",
    "2-process training with no data/prepared",
    "ffl train -S train.processes=2   (no data/prepared)",
    "exit 2, one error line naming data/prepared; nothing written",
    needs={"plain"},
)
def _(c: Ctx):
    ws = c.ws("plain")
    c.expect_error(c.ffl(*DDP, cwd=ws, timeout=90), names=["data/prepared"])
    c.check(not (ws / "models").exists(), "models/ was written")


@case(
    "ddp_rerun_finished",
    "2-process training again over a finished run's outputs",
    "ffl train -S train.processes=2   (models/model.pt exists)",
    "exit 0; a new models/model.pt; no checkpoint left",
    needs={"base"},
    weight=12,
)
def _(c: Ctx):
    ws = c.ws("base")
    if c.expect_ok(c.ffl(*DDP, cwd=ws, timeout=120)):
        c.check((ws / "models" / "model.pt").exists(), "no models/model.pt")
        c.check(not (ws / "checkpoints" / "last.pt").exists(), "checkpoints/last.pt left")


@case(
    "ddp_params_fifo",
    "-p names a named pipe",
    "mkfifo pipe.yaml; ffl train -p pipe.yaml -S train.processes=2",
    "exit 2 at once (no hang), one error line naming pipe.yaml (not a regular file)",
    needs={"prepared"},
)
def _(c: Ctx):
    ws = c.ws("prepared")
    os.mkfifo(ws / "pipe.yaml")
    c.expect_error(
        c.ffl("train", "-p", "pipe.yaml", "-S", "train.processes=2", cwd=ws, timeout=45), names=["pipe.yaml"]
    )


@case(
    "ddp_params_alias_bomb",
    "a params file whose YAML aliases expand without bound (billion laughs)",
    "ffl train -p bomb.yaml -S train.processes=2",
    "exit 2 at once, one error line naming bomb.yaml (expands to more than 100000 values)",
    needs={"prepared"},
)
def _(c: Ctx):
    ws = c.ws("prepared")
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join(['*a' + str(i - 1)] * 10)}]" for i in range(1, 9)]
    (ws / "bomb.yaml").write_text("\n".join(lines) + "\n")
    c.expect_error(
        c.ffl("train", "-p", "bomb.yaml", "-S", "train.processes=2", cwd=ws, timeout=45), names=["bomb.yaml"]
    )


@case(
    "ddp_params_empty",
    "-p names an empty file",
    ": > empty.yaml; ffl train -p empty.yaml -S train.processes=2",
    "exit 2, one error line naming empty.yaml (or the first missing key)",
    needs={"prepared"},
)
def _(c: Ctx):
    ws = c.ws("prepared")
    (ws / "empty.yaml").write_text("")
    c.expect_error(c.ffl("train", "-p", "empty.yaml", "-S", "train.processes=2", cwd=ws), names=["empty.yaml", "seed"])


@case(
    "ddp_params_symlink",
    "params.yaml is a symlink to the real file",
    "mv params.yaml real.yaml; ln -s real.yaml params.yaml; ffl train -S train.processes=2",
    "exit 0 with models/model.pt",
    needs={"prepared"},
    weight=12,
)
def _(c: Ctx):
    ws = c.ws("prepared")
    (ws / "params.yaml").rename(ws / "real.yaml")
    (ws / "params.yaml").symlink_to("real.yaml")
    if c.expect_ok(c.ffl(*DDP, cwd=ws, timeout=120)):
        c.check((ws / "models" / "model.pt").exists(), "no models/model.pt")


@case(
    "ddp_outputs_deleted_midway",
    "models/ and dvclive/ deleted during a 30-epoch 2-process run",
    "ffl train -S train.processes=2 -S train.epochs=30; rm -rf models dvclive (after epoch 1)",
    "exit 0 with models/model.pt and dvclive/metrics.json (30 epochs), or one error line (exit 1)",
    needs={"base"},
    weight=30,
)
def _(c: Ctx):
    ws = c.ws("base")
    p = c.spawn(*DDP, *LONG, cwd=ws)
    if wait_until((ws / "checkpoints" / "last.pt").exists, 90, p):
        shutil.rmtree(ws / "models", ignore_errors=True)
        shutil.rmtree(ws / "dvclive", ignore_errors=True)
        c.note("models/ and dvclive/ deleted")
    if c.expect_clean(c.finish(p, 150), codes=(1,), names=["models", "dvclive"]):
        c.check((ws / "models" / "model.pt").exists(), "exit 0 but no models/model.pt")
        c.check((ws / "dvclive" / "metrics.json").exists(), "exit 0 but no dvclive/metrics.json")
        c.check(dvclive_epochs(ws) == N_LONG, f"dvclive logged {dvclive_epochs(ws)} epochs, expected {N_LONG}")


@case(
    "ddp_checkpoints_deleted_midway",
    "checkpoints/ deleted again and again for 3 s during a 30-epoch 2-process run",
    "ffl train -S train.processes=2 -S train.epochs=30; rm -rf checkpoints (every 0.1 s, after epoch 1)",
    "exit 0 with models/model.pt, or a failed run (exit 1) whose own error line names checkpoints "
    "(README's DDP form: the others' 'process N: ...' lines and the final line naming the process may follow)",
    needs={"prepared"},
    weight=30,
)
def _(c: Ctx):
    ws = c.ws("prepared")
    p = c.spawn(*DDP, *LONG, cwd=ws)
    if wait_until((ws / "checkpoints" / "last.pt").exists, 90, p):
        end = time.monotonic() + 3
        while time.monotonic() < end and p.alive():
            shutil.rmtree(ws / "checkpoints", ignore_errors=True)
            time.sleep(0.1)
        c.note("checkpoints/ deleted for 3 s")
    r = c.finish(p, 150)
    if c.expect_clean(r, codes=(1,), names=["checkpoints"], anywhere=True, process_lines=True):
        c.check((ws / "models" / "model.pt").exists(), "exit 0 but no models/model.pt")


# --------------------------------------------------------------------------------------------
# running and reporting


@dataclass
class Outcome:
    case: Case
    ok: bool
    secs: float
    observed: str
    problems: list[str] = field(default_factory=list)


class Sanitizer:
    def __init__(self, root: Path):
        self.pairs = [(str(root), "<tmp>"), (str(REPO), "<repo>"), (str(VENV_BIN), "<venv>")]

    def __call__(self, s: str) -> str:
        for a, b in self.pairs:
            s = s.replace(a, b)
        s = re.sub(r"<tmp>/[\w.+-]+-[\w]{8}/(ws\d?/)?", "<tmp>/", s)  # a case's folder
        s = re.sub(r"(?<![\w.<>~-])/[^\s/'\"(),;|]+(?:/[^\s/'\"(),;|]+)*", "<path>", s)  # any other absolute path
        return s


def run_case(cs: Case, root: Path, starts: Starts) -> Outcome:
    c = Ctx(cs.name, root, starts)
    t0 = time.monotonic()
    try:
        for n in sorted(cs.needs):
            if n in starts.failed:
                raise RuntimeError(f"starting point {n} failed: {starts.failed[n]}")
        cs.fn(c)
    except Exception as e:
        c.problems.append(f"the sweep's case raised {type(e).__name__}: {e}")
    secs = time.monotonic() - t0
    return Outcome(cs, not c.problems, secs, " / ".join(c.steps), c.problems)


def md_cell(s: str, limit=600) -> str:
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "'")


def write_md(path: Path, outcomes: list[Outcome], argv: list[str], wall: float, clean: Sanitizer) -> None:
    passed = sum(o.ok for o in outcomes)
    lines = [
        "# A careless user's sweep of the `ffl` command line",
        "",
        f"`{clean(' '.join(shlex.quote(a) for a in argv))}`, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPU cores, {len(outcomes)} cases in {wall / 60:.1f} min (2 at a time): "
        f"**{passed} of {len(outcomes)} pass**.",
        "",
        "Each case runs in its own temporary folder (`<tmp>`), a copy of a starting point built once per sweep: "
        "*plain* (a tiny params.yaml: 10 shapes images per class, 1 epoch, batch 16; and tiny_tables.yaml, "
        "one table `tiny` of rows `a`, `b`), *prepared* (+ data/prepared), *base* (+ a trained model and its export), "
        "*tuned* (+ a finished 2-trial search), *gitfresh* (a git clone of this repository with tiny_tables.yaml "
        "committed), *git* (+ `ffl reproduce tiny --seeds 0` recorded and `ffl report tiny` written). "
        "Permission cases run without root's capabilities (`setpriv --inh-caps=-all --bounding-set=-all`).",
        "",
        "Checked everywhere: a failure ends in one `error: ` line on stderr naming what is at fault, exit 2 for bad "
        "input, 1 for a failed run, 130 for an interrupt; no traceback; no library chatter on stderr; no half-written "
        "outputs; recorded results never silently replaced by emptier ones; repeated inputs taken once.",
        "",
        "| # | case | what it does | command | expected | observed | s | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(outcomes, 1):
        observed = o.observed + ("" if o.ok else " — **" + "; ".join(o.problems) + "**")
        lines.append(
            f"| {i} | {o.case.name} | {md_cell(o.case.what)} | `{md_cell(o.case.cmd, 300)}` "
            f"| {md_cell(o.case.expected)} "
            f"| {md_cell(clean(observed), 900)} | {o.secs:.0f} | {'PASS' if o.ok else '**FAIL**'} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


class Session:
    """The sweep's starting points for cases run one at a time (the pytest suite): built on first
    need, in one temporary folder, removed by ``close``."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="careless-sweep-"))
        self.starts = Starts(self.root)
        self.starts.start(set().union(*(cs.needs for cs in CASES.values())))  # in the background

    def run(self, cs: Case) -> Outcome:
        while not self.starts.is_ready(cs.needs):  # (a starting point that failed is ready, and said)
            time.sleep(0.3)
        return run_case(cs, self.root, self.starts)

    def close(self) -> None:
        for p in [self.root, *self.root.rglob("*")]:  # read-only folders of the permission cases
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="case names or globs ('predict_*')")
    ap.add_argument("--md", type=Path, default=REPO / "tests" / "sweeps" / "results" / "careless.md")
    ap.add_argument("--jobs", type=int, default=2, choices=(1, 2))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()

    cases = list(CASES.values())
    if args.only:
        cases = [cs for cs in cases if any(fnmatch.fnmatch(cs.name, pat) for pat in args.only)]
        if not cases:
            print(f"no case matches {args.only}", file=sys.stderr)
            return 2
    if args.list:
        for cs in cases:
            print(f"{cs.name:40} {cs.what}")
        return 0

    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="careless-sweep-"))
    clean = Sanitizer(root)
    starts = Starts(root)
    try:
        needed = set().union(*(cs.needs for cs in cases))
        print(
            f"{len(cases)} cases, {args.jobs} at a time, each as soon as its starting point is built "
            f"({', '.join(sorted(needed))})",
            flush=True,
        )
        starts.start(needed)
        pending = sorted(cases, key=lambda cs: -cs.weight)  # the longest first, among those ready
        outcomes: dict[str, Outcome] = {}
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    cs = next((cs for cs in pending if starts.is_ready(cs.needs)), None)
                    if cs is not None:
                        pending.remove(cs)
                if cs is None:
                    time.sleep(0.3)
                    continue
                o = run_case(cs, root, starts)
                with lock:
                    outcomes[o.case.name] = o
                    why = "" if o.ok else ": " + clean("; ".join(o.problems))
                    print(f"{'PASS' if o.ok else 'FAIL'} {o.case.name} ({o.secs:.0f} s){why}", flush=True)
                    if not o.ok:
                        print(f"     observed: {clean(o.observed)[:600]}", flush=True)

        workers = [threading.Thread(target=worker) for _ in range(args.jobs)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        ordered = [outcomes[cs.name] for cs in cases]
        wall = time.monotonic() - t0
        write_md(args.md, ordered, ["-m", "tests.sweeps.careless", *sys.argv[1:]], wall, clean)
        passed = sum(o.ok for o in ordered)
        print(f"{passed} of {len(ordered)} pass in {wall / 60:.1f} min; results: {clean(str(args.md))}")
        return 0 if passed == len(ordered) else 1
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            for p in [root, *root.rglob("*")]:  # read-only folders of the permission cases
                try:
                    if p.is_dir() and not p.is_symlink():
                        p.chmod(0o755)
                except OSError:
                    pass
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
