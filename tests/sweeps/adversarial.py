"""Adversarial sweep of the `ffl` command line: what a hostile (or careless) new user does to it.

    make test-adversarial                  # this sweep and tests/sweeps/careless.py, as pytest cases
    .venv/bin/python -m tests.sweeps.adversarial [--only NAME ...] [--md PATH] [--keep]

Every case runs in its own fresh temporary directory (tempfile.mkdtemp), never in the checkout;
the few shared starting points (a prepared tiny dataset, a trained tiny model, a git + DVC clone of
the project with a tiny table) are built once per sweep in their own temporary directories and
copied into a case's directory. Commands run without root's capabilities (setpriv), so that
chmod'ed folders refuse writes as they would for a normal user; the full-disk cases mount a tiny
tmpfs in a private mount namespace (unshare -m) first.

The contract checked (README, "When things go wrong"): a failure the user caused ends in ONE line
on stderr starting with `error: ` (ffl's progress lines may come before it), naming the file / key /
process involved, exit code 2 for bad input (1 for a run that failed, 130 for an interrupt), no
Python traceback, no library chatter (warnings, Ray/DVC/torch log lines) on stderr, and no
half-written outputs. Valid but odd input must succeed sensibly, without chatter.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
FFL = str(VENV / "bin" / "ffl")
# The genuine CIFAR-10 where the other real-data tests find it (tests/test_real_cifar.py); the
# cases that need it are skipped without it.
DATASET = Path(os.environ.get("FFL_CIFAR10_ROOT", ROOT.parent / "shared" / "datasets")) / "cifar-10-batches-bin"


class Skipped(Exception):
    """A case that cannot run on this machine (what it needs is not here)."""


def require_dataset() -> None:
    if not DATASET.is_dir():
        raise Skipped(f"genuine CIFAR-10 is not at {DATASET} (FFL_CIFAR10_ROOT)")


NOCAP = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]  # root without CAP_DAC_OVERRIDE & co.

# The smallest sensible run: 10 shapes per class (90 training, 10 validation, 100 test images),
# one epoch of ResNet-8 branches, no lr drops (a one-epoch run has none to make).
TINY = [
    "-S", "data.shapes.train_per_class=10", "-S", "data.shapes.test_per_class=10",
    "-S", "train.epochs=1", "-S", "train.batch_size=16", "-S", "evaluate.batch_size=50",
    "-S", "train.milestones=[]",
]  # fmt: skip
# Long enough epochs (540 images) to be interrupted in the middle of a run.
MEDIUM = [
    "-S", "data.shapes.train_per_class=60", "-S", "data.shapes.test_per_class=10",
    "-S", "train.epochs=3", "-S", "train.batch_size=16", "-S", "evaluate.batch_size=50",
    "-S", "train.milestones=[]",
]  # fmt: skip

TINY_TABLE = """\
tiny:
  title: tiny table
  base: params.yaml
  set: [data.shapes.train_per_class=10, data.shapes.test_per_class=10, train.epochs=1, train.batch_size=16,
        evaluate.batch_size=50, "train.milestones=[]"]
  compare: vanilla
  rows:
    vanilla: {set: [method.name=vanilla]}
"""

# Library chatter on stderr: Python warnings (and the source line they quote), glog / torch /
# Ray / DVC log lines, a traceback's frames.
CHATTER = re.compile(
    r"(Warning: |\bwarnings\.warn\(|_warn\($|^[WEIF]\d{4} \d\d:\d\d|^\[[WEI] |\(raylet\)|\(pid=\d+|"
    r"^(WARNING|INFO|ERROR|DEBUG|CRITICAL)\b|^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d|^\s*File \".*\", line \d+)"
)


def display(args: list[str]) -> str:
    text = shlex.join(args)
    for name, values in (("$TINY", TINY), ("$MEDIUM", MEDIUM)):
        text = text.replace(shlex.join(values), name)
    return text.replace(FFL, "ffl")


# -- running commands ---------------------------------------------------------------------------


@dataclass
class Proc:
    args: list[str]
    rc: int | None  # None: timed out (killed)
    out: str
    err: str
    seconds: float
    triggered: bool = True

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def base_env(tag: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LOGLEVEL", "PYTHONWARNINGS")}
    env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["FFL_SWEEP_TAG"] = tag
    env.pop("FFL_SWEEP_REEXEC", None)
    env["TERM"] = "dumb"
    return env


class Ctx:
    """One case's fresh directory and the commands it ran (for the report)."""

    def __init__(self, name: str):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"ffl-sweep-{name}-"))
        self.tag = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.commands: list[str] = []
        self.env = base_env(self.tag)
        # Ray's state (and the cluster `--address auto` looks for) under a folder of this case's own:
        # a Ray that another program on this machine runs must not be joined by mistake.
        self.ray_dir = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
        self.env["RAY_TMPDIR"] = str(self.ray_dir)

    def p(self, rel: str) -> Path:
        return self.dir / rel

    def write(self, rel: str, content: str | bytes) -> Path:
        path = self.p(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def use(self, fixture: str) -> None:
        shutil.copytree(FIXTURES.get(fixture), self.dir, symlinks=True, dirs_exist_ok=True)

    def run(self, args: list[str], timeout: float = 120, shown: str | None = None, preexec=None,
            nocap: bool = True) -> Proc:  # fmt: skip
        self.commands.append(shown or display(args))
        full = (NOCAP if nocap else []) + args
        start = time.monotonic()
        proc = subprocess.Popen(
            full, cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True, preexec_fn=preexec,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            out, err = proc.communicate()
            rc = None
        return Proc(args, rc, out, err, time.monotonic() - start)

    def ffl(self, *args: str, **kw) -> Proc:
        return self.run([FFL, *args], **kw)

    def ffl_in_tmpfs(self, mount: str, size: str, *args: str, fill: bool = False, timeout: float = 120) -> Proc:
        """`ffl ...` with ``mount`` (a folder of the case) on a tmpfs of ``size``, in a private mount
        namespace: a disk that fills up. ``fill``: the tmpfs starts full."""
        self.p(mount).mkdir(parents=True, exist_ok=True)
        script = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(mount)} || exit 99; "
        if fill:
            script += f"dd if=/dev/zero of={shlex.quote(mount)}/.fill bs=1k count=100000 2>/dev/null; "
        script += 'exec setpriv --inh-caps=-all --bounding-set=-all "$@"'
        shown = f"[{mount}/ on a {size} tmpfs{', already full' if fill else ''}] {display([FFL, *args])}"
        return self.run(["unshare", "-m", "sh", "-c", script, "sh", FFL, *args], timeout, shown, nocap=False)

    def ffl_signal(self, *args: str, trigger, action, delay: float = 0.0, timeout: float = 120,
                   what: str = "") -> Proc:  # fmt: skip
        """`ffl ...`, and ``action(popen)`` once ``trigger`` (a regex on an output line, or a callable
        polled) fires; then waits for the command to end."""
        self.commands.append(display([FFL, *args]) + (f"  [{what}]" if what else ""))
        start = time.monotonic()
        proc = subprocess.Popen(
            [*NOCAP, FFL, *args], cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
        )  # fmt: skip
        out: list[str] = []
        err: list[str] = []
        fired = threading.Event()

        def pump(stream, sink):
            for line in iter(stream.readline, ""):
                sink.append(line)
                if isinstance(trigger, str) and re.search(trigger, line):
                    fired.set()
            stream.close()

        threads = [threading.Thread(target=pump, args=(s, k), daemon=True) for s, k in
                   ((proc.stdout, out), (proc.stderr, err))]  # fmt: skip
        for t in threads:
            t.start()
        deadline = start + timeout
        while time.monotonic() < deadline and proc.poll() is None and not fired.is_set():
            if callable(trigger) and trigger():
                fired.set()
                break
            time.sleep(0.05)
        triggered = fired.is_set() and proc.poll() is None
        if triggered:
            time.sleep(delay)
            if proc.poll() is None:
                action(proc)
            else:
                triggered = False
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
            rc = None
        for t in threads:
            t.join(timeout=5)
        return Proc([FFL, *args], rc, "".join(out), "".join(err), time.monotonic() - start, triggered)

    def cleanup(self) -> None:
        for path in [self.dir, *self.dir.rglob("*")]:
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.chmod(stat.S_IRWXU)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.ray_dir, ignore_errors=True)


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def to_group(sig):
    return lambda proc: os.killpg(proc.pid, sig)


def to_process(sig):
    return lambda proc: proc.send_signal(sig)


def tagged_pids(tag: str, rank: int) -> list[int]:
    """The processes of a case (its tag in their environment) that torchrun started as ``rank``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FFL_SWEEP_TAG={tag}".encode() in env and f"LOCAL_RANK={rank}".encode() in env:
            found.append(int(entry.name))
    return sorted(found)


def digest(path: Path) -> str | None:
    """Contents of a file or a folder (names and bytes), or None when absent."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


# -- the contract -------------------------------------------------------------------------------


def _common(p: Proc) -> list[str]:
    why = []
    if p.rc is None:
        why.append(f"timed out after {p.seconds:.0f} s")
    if "Traceback" in p.err or "Traceback" in p.out:
        why.append("a Python traceback")
    frames = re.compile(r'^\s*File ".*", line \d+|^\[rank\d+\]:')  # a traceback's, counted once above
    chatter = [line for line in p.lines if CHATTER.search(line) and not ("Traceback" in p.err and frames.search(line))]
    if chatter:
        why.append(f"library chatter on stderr: {chatter[0].strip()[:140]!r}")
    return why


def expect_error(p: Proc, code: int | tuple[int, ...], mentions=(), anywhere=(), prior_errors: bool = False):
    """Ends in one `error: ` line naming each of ``mentions``, exit ``code``; ``anywhere``: on stderr
    at all; ``prior_errors``: other processes' own `error:` lines may come before (DDP ranks)."""
    codes = code if isinstance(code, tuple) else (code,)
    why = _common(p)
    if p.rc is not None and p.rc not in codes:
        why.append(f"exit code {p.rc}, expected {'/'.join(map(str, codes))}")
    lines = p.lines
    if not lines:
        why.append("nothing on stderr")
        return why
    last = lines[-1]
    if not last.startswith("error: "):
        why.append("the last stderr line is not an `error: ` line")
    errors = [line for line in lines if line.startswith("error: ")]
    if len(errors) > 1 and not prior_errors:
        why.append(f"{len(errors)} `error: ` lines")
    for m in mentions:
        if m.lower() not in last.lower():
            why.append(f"the error line does not name {m!r}")
    for m in anywhere:
        if m.lower() not in p.err.lower():
            why.append(f"stderr does not name {m!r}")
    return why


def expect_ok(p: Proc, stdout=(), stderr=()):
    why = _common(p)
    if p.rc != 0:
        why.append(f"exit code {p.rc}, expected 0")
    if any(line.startswith("error: ") for line in p.lines):
        why.append("an `error: ` line on stderr")
    for m in stdout:
        if m.lower() not in p.out.lower():
            why.append(f"stdout does not show {m!r}")
    for m in stderr:
        if m.lower() not in p.err.lower():
            why.append(f"stderr does not show {m!r}")
    return why


def expect_ok_or_error(p: Proc, code=2, mentions=()):
    """Valid but odd: either it works, or it is refused by the contract."""
    return expect_ok(p) if p.rc == 0 else expect_error(p, code, mentions)


def absent(ctx: Ctx, *rels: str) -> list[str]:
    return [f"{rel} was written by the failed command" for rel in rels if ctx.p(rel).exists()]


def present(ctx: Ctx, *rels: str) -> list[str]:
    return [f"{rel} is missing" for rel in rels if not ctx.p(rel).exists()]


# -- shared starting points (each built once, in its own temporary directory) -------------------


class Fixtures:
    def __init__(self):
        self.built: dict[str, Path] = {}
        self.procs: dict[str, list[Proc]] = {}
        self.lock = threading.RLock()
        self.ctxs: list[Ctx] = []

    def get(self, name: str) -> Path:
        with self.lock:
            if name not in self.built:
                ctx = Ctx(f"fixture-{name}")
                self.ctxs.append(ctx)
                getattr(self, "_" + name)(ctx)
                self.built[name] = ctx.dir
                self.procs[name] = []
            return self.built[name]

    def _need(self, ctx: Ctx, p: Proc, what: str) -> Proc:
        if p.rc != 0:
            raise RuntimeError(f"fixture {ctx.name}: {what} failed ({p.rc}): {p.err[-800:]}")
        return p

    def _params(self, ctx: Ctx):
        shutil.copy(ROOT / "params.yaml", ctx.p("params.yaml"))

    def _configs(self, ctx: Ctx):
        self._params(ctx)
        shutil.copytree(ROOT / "configs", ctx.p("configs"))

    def _prepared(self, ctx: Ctx):
        self._params(ctx)
        self._need(ctx, ctx.ffl("prepare", *TINY), "prepare")

    def _trained(self, ctx: Ctx):
        shutil.copytree(self.get("prepared"), ctx.dir, dirs_exist_ok=True)
        self._need(ctx, ctx.ffl("train", *TINY), "train")
        self._need(ctx, ctx.ffl("export"), "export")

    def _medium(self, ctx: Ctx):
        self._params(ctx)
        self._need(ctx, ctx.ffl("prepare", *MEDIUM), "prepare")

    def _checkpoint(self, ctx: Ctx):
        """An interrupted one-process run of $MEDIUM: checkpoints/last.pt after epoch 1."""
        shutil.copytree(self.get("medium"), ctx.dir, dirs_exist_ok=True)
        p = ctx.ffl_signal("train", *MEDIUM, trigger=r"epoch 1/3", action=to_group(signal.SIGINT))
        if not ctx.p("checkpoints/last.pt").is_file():
            raise RuntimeError(f"fixture checkpoint: no checkpoint after the interrupt ({p.rc}): {p.err[-500:]}")

    def _repo(self, ctx: Ctx):
        """A clone of the project as a user has it (git + DVC, committed), with a tiny table."""
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split("\n")
        keep = (".dvc/", ".dvcignore", ".gitignore", "dvc.yaml", "params.yaml", "pyproject.toml", "configs/",
                "ffl/", "pipeline/")  # fmt: skip
        for rel in tracked:
            if rel and rel.startswith(keep) and (ROOT / rel).is_file():
                ctx.p(rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / rel, ctx.p(rel))
        ctx.write("configs/tiny.yaml", TINY_TABLE)
        git_init(ctx, commit=True, dvc_init=False)

    def _repo_exp(self, ctx: Ctx):
        shutil.copytree(self.get("repo"), ctx.dir, symlinks=True, dirs_exist_ok=True)
        p = ctx.ffl("reproduce", "tiny", "--tables", "configs/tiny.yaml", "--seeds", "0", timeout=240)
        self.procs["repo_exp_build"] = [p]
        if p.rc != 0:
            raise RuntimeError(f"fixture repo_exp: reproduce failed ({p.rc}): {p.err[-800:]}")


FIXTURES = Fixtures()


def git_init(ctx: Ctx, commit: bool = True, dvc_init: bool = True) -> None:
    cmds = [["git", "init", "-q"], ["git", "config", "user.email", "a@b"], ["git", "config", "user.name", "a"]]
    if dvc_init:
        cmds.append([str(VENV / "bin" / "dvc"), "init", "-q"])
    if commit:
        cmds += [["git", "add", "-A"], ["git", "commit", "-qm", "base"]]
    for c in cmds:
        subprocess.run(c, cwd=ctx.dir, env=ctx.env, check=True, capture_output=True)


# -- the cases ----------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    command: str  # the area (the ffl command) it exercises
    setup: str
    expect: str
    fn: object
    light: bool  # no training, no Ray, no signals: may run beside another light case
    timeout: float = 120


@dataclass
class Result:
    case: Case
    passed: bool
    why: list[str]
    commands: list[str]
    rc: int | None
    first: str
    last: str
    seconds: float
    procs: list[Proc] = field(default_factory=list)
    skipped: str = ""  # why the case could not run here


CASES: list[Case] = []
SHOW = False  # --show: print every case's output


def case(name, command, setup, expect, light=False, timeout=120):
    def register(fn):
        CASES.append(Case(name, command, setup, expect, fn, light, timeout))
        return fn

    return register


# ---- the command line itself


@case("cli_unknown_command", "cli", "empty dir", "exit 2, one error line naming the command", light=True)
def _(c):
    return c.ffl("trian"), lambda p: expect_error(p, 2, ["trian"])


@case("cli_unknown_option", "train", "empty dir", "exit 2, one error line naming --epochs", light=True)
def _(c):
    return c.ffl("train", "--epochs", "3"), lambda p: expect_error(p, 2, ["--epochs"])


@case("cli_option_missing_value", "predict", "empty dir", "exit 2, one line naming --top", light=True)
def _(c):
    return c.ffl("predict", "x.png", "--top"), lambda p: expect_error(p, 2, ["--top"])


# ---- params files


@case("params_missing", "train", "empty dir (no params.yaml)", "exit 2, names params.yaml", light=True)
def _(c):
    return c.ffl("train"), lambda p: expect_error(p, 2, ["params.yaml"])


@case("params_empty", "train", "params.yaml is an empty file", "exit 2, names a missing key", light=True)
def _(c):
    c.write("params.yaml", "")
    return c.ffl("train"), lambda p: expect_error(p, 2, ["required"])


@case("params_binary", "prepare", "params.yaml holds 4 KiB of random bytes", "exit 2, names params.yaml",
      light=True)  # fmt: skip
def _(c):
    c.write("params.yaml", os.urandom(4096))
    return c.ffl("prepare"), lambda p: expect_error(p, 2, ["params.yaml"])


@case("params_truncated", "train", "params.yaml cut at 45% of its bytes, mid-line",
      "exit 2, names the missing key or the YAML error", light=True)  # fmt: skip
def _(c):
    text = (ROOT / "params.yaml").read_bytes()
    c.write("params.yaml", text[: int(len(text) * 0.45)])
    return c.ffl("train"), lambda p: expect_error(p, 2)


@case("params_fifo", "train", "-p names a FIFO nobody writes to", "exit 2 at once (no hang), names the FIFO",
      light=True, timeout=40)  # fmt: skip
def _(c):
    os.mkfifo(c.p("pipe.yaml"))
    return c.ffl("train", "-p", "pipe.yaml", timeout=30), lambda p: expect_error(p, 2, ["pipe.yaml"])


@case("params_unreadable", "train", "params.yaml chmod 000", "exit 2, names params.yaml", light=True)
def _(c):
    shutil.copy(ROOT / "params.yaml", c.p("params.yaml"))
    c.p("params.yaml").chmod(0)
    return c.ffl("train"), lambda p: expect_error(p, 2, ["params.yaml"])


@case("params_billion_laughs", "train", "params.yaml with 10 levels of 10-fold YAML aliases (1e10 values)",
      "exit 2 quickly, names params.yaml", light=True, timeout=60)  # fmt: skip
def _(c):
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]")
    c.write("params.yaml", "\n".join(lines) + "\n")
    return c.ffl("train", timeout=50), lambda p: expect_error(p, 2, ["params.yaml"])


@case("params_duplicate_key", "train", "params.yaml with `seed:` twice", "exit 2, names the duplicate", light=True)
def _(c):
    c.write("params.yaml", (ROOT / "params.yaml").read_text() + "\nseed: 1\n")
    return c.ffl("train"), lambda p: expect_error(p, 2, ["seed"])


@case("params_tab_indent", "train", "params.yaml with a tab indenting `source:`",
      "exit 2, names params.yaml and the line", light=True)  # fmt: skip
def _(c):
    c.write("params.yaml", (ROOT / "params.yaml").read_text().replace("\n  source:", "\n\tsource:", 1))
    return c.ffl("train"), lambda p: expect_error(p, 2, ["params.yaml", "line"])


@case("params_base_cycle", "train", "-p a.yaml, a.yaml: `base: b.yaml`, b.yaml: `base: a.yaml`",
      "exit 2, says the bases loop", light=True)  # fmt: skip
def _(c):
    c.write("a.yaml", "base: b.yaml\nseed: 1\n")
    c.write("b.yaml", "base: a.yaml\nseed: 2\n")
    return c.ffl("train", "-p", "a.yaml"), lambda p: expect_error(p, 2, ["base"])


@case("params_bom_crlf", "prepare", "params.yaml saved by a Windows editor: UTF-8 BOM and CRLF line ends",
      "valid: prepares the data (exit 0)")  # fmt: skip
def _(c):
    text = (ROOT / "params.yaml").read_text().replace("\n", "\r\n")
    c.write("params.yaml", "\ufeff".encode() + text.encode())
    p = c.ffl("prepare", *TINY)
    return p, lambda p: expect_ok(p) + present(c, "data/prepared/meta.json")


# ---- -S overrides (refused before any work: the folder holds params.yaml only)


def override_case(name, command, value, expect, mentions, code=2):
    @case(name, command, "params.yaml only", expect, light=True)
    def _(c):
        c.use("params")
        return c.ffl(
            command, *TINY, "-S", value
        ), lambda p: expect_error(p, code, mentions) + absent(c, "models", "data/prepared", "checkpoints")


override_case("set_lr_string", "train", "train.lr=abc", "exit 2, names train.lr", ["train.lr"])
override_case("set_epochs_negative", "train", "train.epochs=-3", "exit 2, names train.epochs", ["train.epochs"])
override_case("set_lr_inf", "train", "train.lr=.inf", "exit 2, names train.lr (finite only)", ["train.lr"])
override_case("set_batch_huge", "train", "train.batch_size=1000000000000000000000000000000",
              "exit 2, names train.batch_size", ["train.batch_size"])  # fmt: skip
override_case("set_no_equals", "train", "train.lr", "exit 2, says key=value", ["train.lr"])
override_case("set_empty_part", "prepare", "train..lr=1", "exit 2, names the empty part", ["train..lr"])
override_case("set_bad_yaml", "train", "train.milestones=[0.5,", "exit 2, names train.milestones",
              ["train.milestones"])  # fmt: skip
override_case("set_nested_10000", "train", "train.lr=" + "[" * 10000 + "]" * 10000,
              "exit 2 quickly, names train.lr (too deep)", ["train.lr"])  # fmt: skip
override_case("set_homoglyph_key", "train", "tr\u0430in.lr=0.1", "exit 2, unknown key (Cyrillic a)",
              ["unknown key"])  # fmt: skip
override_case("set_newline_in_key", "train", "train.l\nr=0.1", "exit 2, ONE error line (key holds a newline)",
              ["unknown key"])  # fmt: skip
override_case("set_into_value", "train", "train.lr.x=1", "exit 2, says train.lr is a value", ["train.lr"])
override_case("set_seed_2_32", "train", "seed=4294967296", "exit 2, names seed", ["seed"])
override_case("set_arch_unknown", "train", "model.arch=resnet7", "exit 2, names model.arch", ["model.arch"])
override_case("set_subnets_huge", "train", "model.subnets=100000", "exit 2, names model.subnets",
              ["model.subnets"])  # fmt: skip
override_case("set_method_empty", "train", "method.name=", "exit 2, names method.name", ["method.name"])
override_case("set_moved_key", "train", "fusion.width=32", "exit 2, says where fusion.width moved",
              ["method.ffl.fusion"])  # fmt: skip
override_case("set_val_fraction_empties", "prepare", "data.val_fraction=0.999",
              "exit 2, names data.val_fraction (no training images left)", ["data.val_fraction"])  # fmt: skip
override_case("set_device_cuda", "train", "train.device=cuda", "exit 2 on a machine without GPU, names train.device",
              ["train.device"])  # fmt: skip
override_case("set_processes_uneven", "train", "train.processes=3", "exit 2, batch 16 does not split over 3",
              ["train.batch_size"])  # fmt: skip


# ---- prepare


def cifar_copy(c: Ctx, change: dict[str, object]) -> None:
    """raw/cifar-10-batches-bin: links to the real files, ``change``d ones replaced."""
    require_dataset()
    folder = c.p("raw/cifar-10-batches-bin")
    folder.mkdir(parents=True)
    for f in DATASET.iterdir():
        if f.name in change:
            fix = change[f.name]
            if callable(fix):
                fix(folder / f.name, f)
            else:
                (folder / f.name).write_bytes(fix)
        else:
            (folder / f.name).symlink_to(f)


CIFAR = ["-S", "data.source=cifar10", "-S", "data.root=raw"]


@case("prepare_cifar_missing_root", "prepare", "params.yaml only", "exit 2, names data.root and the folders wanted",
      light=True)  # fmt: skip
def _(c):
    c.use("params")
    return c.ffl("prepare", *CIFAR), lambda p: expect_error(p, 2, ["data.root"]) + absent(c, "data/prepared")


@case("prepare_cifar_truncated", "prepare",
      "raw/cifar-10-batches-bin: the real files linked, data_batch_3.bin cut to 1,000,000 bytes",
      "exit 2, names data_batch_3.bin as truncated")  # fmt: skip
def _(c):
    c.use("params")
    cifar_copy(c, {"data_batch_3.bin": lambda dst, src: dst.write_bytes(src.read_bytes()[:1_000_000])})
    return c.ffl("prepare", *CIFAR), lambda p: expect_error(p, 2, ["data_batch_3.bin", "truncated"]) + absent(
        c, "data/prepared")  # fmt: skip


@case("prepare_cifar_altered", "prepare", "real files linked, data_batch_2.bin copied with one byte flipped",
      "exit 2, names data_batch_2.bin (md5)")  # fmt: skip
def _(c):
    c.use("params")

    def flip(dst, src):
        data = bytearray(src.read_bytes())
        data[12345] ^= 0xFF
        dst.write_bytes(bytes(data))

    cifar_copy(c, {"data_batch_2.bin": flip})
    return c.ffl("prepare", *CIFAR), lambda p: expect_error(p, 2, ["data_batch_2.bin"]) + absent(c, "data/prepared")


@case("prepare_cifar_labels_not_utf8", "prepare",
      "real batches linked, batches.meta.txt: 10 lines of Latin-1 bytes (not UTF-8)",
      "exit 2, names batches.meta.txt")  # fmt: skip
def _(c):
    c.use("params")
    cifar_copy(c, {"batches.meta.txt": "\n".join(f"cl\xe4ss{i}" for i in range(10)).encode("latin-1")})
    return c.ffl("prepare", *CIFAR), lambda p: expect_error(p, 2, ["batches.meta.txt"]) + absent(c, "data/prepared")


@case("prepare_cifar_download_offline", "prepare", "empty raw/, no network",
      "exit 2 (no hang), says the download failed and where to put the files", timeout=150)  # fmt: skip
def _(c):
    c.use("params")
    c.p("raw").mkdir()
    p = c.ffl("prepare", *CIFAR, "-S", "data.download=true", timeout=140)
    return p, lambda p: expect_error(p, 2, ["download"])


@case("prepare_output_is_file", "prepare", "data/prepared is a regular file", "exit 2, names data/prepared",
      light=True)  # fmt: skip
def _(c):
    c.use("params")
    c.write("data/prepared", "not a folder\n")
    return c.ffl("prepare", *TINY), lambda p: expect_error(p, 2, ["data/prepared"])


@case("prepare_readonly_data", "prepare", "data/ chmod 555", "exit 2, names data/prepared, nothing written",
      light=True)  # fmt: skip
def _(c):
    c.use("params")
    c.p("data").mkdir()
    c.p("data").chmod(0o555)
    return c.ffl("prepare", *TINY), lambda p: expect_error(p, 2, ["data"]) + absent(c, "data/prepared")


@case("prepare_imagefolder_empty", "prepare", "imgs/ is an empty folder",
      "exit 2, names data.root and the layout wanted", light=True)  # fmt: skip
def _(c):
    c.use("params")
    c.p("imgs").mkdir()
    p = c.ffl("prepare", "-S", "data.source=imagefolder", "-S", "data.root=imgs")
    return p, lambda p: expect_error(p, 2, ["data.root"])


@case("prepare_cifar_interrupted", "prepare",
      "a prepared tiny shapes dataset; `ffl prepare` of the real CIFAR-10 gets SIGINT while it writes",
      "exit 130, one line; data/prepared is the old dataset or none (never half of the new one)")  # fmt: skip
def _(c):
    require_dataset()
    c.use("prepared")
    old = digest(c.p("data/prepared"))
    tmp_writes = lambda: any(".tmp" in f.name for f in c.p("data/prepared").iterdir())
    p = c.ffl_signal("prepare", "-S", "data.source=cifar10", "-S", f"data.root={DATASET.parent}",
                     trigger=tmp_writes, action=to_group(signal.SIGINT),
                     what="SIGINT to the group once data/prepared/.arrays.npz.tmp-* appears")  # fmt: skip

    def check(p):
        why = expect_error(p, 130) if p.triggered else ["the signal never fired (the command ended first)"]
        now = digest(c.p("data/prepared"))
        meta = c.p("data/prepared/meta.json")
        if now is not None and now != old and meta.exists():
            why.append("data/prepared changed but is not the old dataset")
        load = c.ffl("train", *TINY)  # the old dataset, or a clean "run ffl prepare"
        if load.rc != 0 and expect_error(load, 2, ["prepare"]):
            why.append(f"afterwards `ffl train $TINY` fails: {load.lines[-1] if load.lines else load.rc}")
        return why

    return p, check


@case("prepare_imagefolder_bad_image", "train",
      "imgs/{train,val}/{a,b}/: 4 PNGs per class, train/a/broken.png is 200 bytes of a truncated PNG",
      "prepare OK; train either skips it or ends with exit 2 naming broken.png")  # fmt: skip
def _(c):
    from PIL import Image

    c.use("params")
    for split in ("train", "val"):
        for k, cls in enumerate("ab"):
            for i in range(4):
                c.p(f"imgs/{split}/{cls}").mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), (40 * i, 100 * k, 50)).save(c.p(f"imgs/{split}/{cls}/{i}.png"))
    big = c.p("big.png")
    Image.effect_noise((64, 64), 50).convert("RGB").save(big)
    c.write("imgs/train/a/broken.png", big.read_bytes()[:200])
    big.unlink()
    files = ["-S", "data.source=imagefolder", "-S", "data.root=imgs", "-S", "data.files.image_size=8",
             "-S", "data.files.resize=8", "-S", "data.files.workers=0", "-S", "data.val_fraction=0",
             "-S", "train.batch_size=2", "-S", "train.epochs=1", "-S", "train.milestones=[]"]  # fmt: skip
    prep = c.ffl("prepare", *files)
    if prep.rc != 0:
        return prep, lambda p: ["prepare failed: " + (p.lines[-1] if p.lines else str(p.rc))]
    return c.ffl("train", *files), lambda p: expect_ok_or_error(p, 2, ["broken.png"])


# ---- train


@case("train_not_prepared", "train", "params.yaml only", "exit 2, says to run ffl prepare", light=True)
def _(c):
    c.use("params")
    return c.ffl("train", *TINY), lambda p: expect_error(p, 2, ["prepare"]) + absent(c, "models/model.pt")


@case("train_prepared_other_params", "train", "tiny prepared data", "exit 2, names data.shapes.noise (0.1 -> 0.2)",
      light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("train", *TINY, "-S", "data.shapes.noise=0.2")
    return p, lambda p: expect_error(p, 2, ["data.shapes.noise"]) + absent(c, "models/model.pt")


@case("train_prepared_truncated", "train", "tiny prepared data, arrays.npz cut to half",
      "exit 2, names data/prepared and ffl prepare", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    npz = c.p("data/prepared/arrays.npz")
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    return c.ffl("train", *TINY), lambda p: expect_error(p, 2, ["data/prepared", "prepare"])


@case("train_prepared_grey_images", "train",
      "tiny prepared data rewritten with 1-channel images (N, 1, 32, 32) in arrays.npz",
      "exit 2, names data/prepared (images not 3x32x32)", light=True)  # fmt: skip
def _(c):
    import numpy as np

    c.use("prepared")
    npz = c.p("data/prepared/arrays.npz")
    with np.load(npz) as z:
        arrays = {k: (z[k][:, :1] if k.endswith("_images") else z[k]) for k in z.files}
    with open(npz, "wb") as f:
        np.savez(f, **arrays)
    p = c.ffl("train", *TINY)
    return p, lambda p: expect_error(p, 2, ["data/prepared"]) + absent(c, "models/model.pt")


@case("train_batch_larger_than_data", "train", "tiny prepared data (90 training images)",
      "exit 2, names train.batch_size; no model written", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("train", *TINY, "-S", "train.batch_size=1000")
    return p, lambda p: expect_error(p, 2, ["train.batch_size"]) + absent(c, "models/model.pt", "checkpoints/last.pt")


@case("train_one_epoch_default_milestones", "train", "tiny prepared data; $TINY but the default milestones",
      "valid (a one-epoch run, as the README's own milestones rule allows): exit 0, no warning on stderr")  # fmt: skip
def _(c):
    c.use("prepared")
    args = [a for a in TINY if a != "train.milestones=[]"]
    args = [a for i, a in enumerate(args) if not (a == "-S" and i + 1 < len(args) and args[i + 1] == "-S")]
    args = args[:-1] if args[-1] == "-S" else args
    p = c.ffl("train", *args)
    return p, lambda p: expect_ok(p) + present(c, "models/model.pt")


@case("train_diverges", "train", "tiny trained model in models/ (kept from before)",
      "train.lr=1e12: exit 1, says the loss became non-finite; the earlier model intact")  # fmt: skip
def _(c):
    c.use("trained")
    old = digest(c.p("models/model.pt"))
    p = c.ffl("train", *TINY, "-S", "train.lr=1e12")

    def check(p):
        why = expect_error(p, 1, ["non-finite"])
        if digest(c.p("models/model.pt")) != old:
            why.append("models/model.pt was replaced by the diverged run")
        return why

    return p, check


@case("train_compile_on_cpu", "train", "tiny prepared data",
      "train.compile=default on a CPU (vanilla): trains, without torch's log lines on stderr", timeout=240)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("train", *TINY, "-S", "method.name=vanilla", "-S", "train.compile=default", timeout=230)
    return p, lambda p: expect_ok_or_error(p, 2, ["train.compile"])


@case("train_checkpoint_garbage", "train", "tiny prepared data; checkpoints/last.pt = 5000 random bytes",
      "exit 2, names checkpoints/last.pt and says what to do (--fresh / delete it)", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    c.write("checkpoints/last.pt", os.urandom(5000))
    p = c.ffl("train", *TINY)
    return p, lambda p: expect_error(p, 2, ["checkpoints/last.pt", "--fresh"]) + absent(c, "models/model.pt")


@case("train_checkpoint_is_a_model", "train", "tiny trained model copied to checkpoints/last.pt",
      "exit 2, says it is not a checkpoint of this project and what to do", light=True)  # fmt: skip
def _(c):
    c.use("trained")
    c.p("checkpoints").mkdir(exist_ok=True)
    shutil.copy(c.p("models/model.pt"), c.p("checkpoints/last.pt"))
    return c.ffl("train", *TINY), lambda p: expect_error(p, 2, ["checkpoints/last.pt", "--fresh"])


@case("train_checkpoint_other_config", "train", "an interrupted $MEDIUM run's checkpoint (after epoch 1)",
      "-S train.lr=0.05: exit 2, names train.lr (0.1 -> 0.05) and --fresh; checkpoint kept", light=True)  # fmt: skip
def _(c):
    c.use("checkpoint")
    old = digest(c.p("checkpoints/last.pt"))
    p = c.ffl("train", *MEDIUM, "-S", "train.lr=0.05")
    return p, lambda p: expect_error(p, 2, ["train.lr", "--fresh"]) + (
        [] if digest(c.p("checkpoints/last.pt")) == old else ["the checkpoint was changed"])  # fmt: skip


@case("train_fresh_over_garbage", "train", "tiny prepared data; checkpoints/last.pt = random bytes",
      "--fresh: trains (exit 0), model written, checkpoint gone")  # fmt: skip
def _(c):
    c.use("prepared")
    c.write("checkpoints/last.pt", os.urandom(5000))
    p = c.ffl("train", *TINY, "--fresh")
    return p, lambda p: expect_ok(p) + present(c, "models/model.pt") + absent(c, "checkpoints/last.pt")


@case("train_checkpoints_is_file", "train", "tiny prepared data; checkpoints is a regular file",
      "exit 2, names checkpoints", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    c.write("checkpoints", "x\n")
    return c.ffl("train", *TINY), lambda p: expect_error(p, 2, ["checkpoints"])


@case("train_model_path_is_dir", "train", "tiny prepared data; models/model.pt is a directory",
      "exit 2 before training, names models/model.pt", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    c.p("models/model.pt").mkdir(parents=True)
    return c.ffl("train", *TINY), lambda p: expect_error(p, 2, ["models/model.pt"])


@case("train_models_readonly", "train", "tiny prepared data; models/ chmod 555",
      "exit 2 before training, names models", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    c.p("models").mkdir()
    c.p("models").chmod(0o555)
    return c.ffl("train", *TINY), lambda p: expect_error(p, 2, ["models"]) + absent(c, "checkpoints/last.pt")


@case("train_workdir_readonly", "train", "tiny prepared data; the project folder itself chmod 555",
      "exit 2 before training, names the folder it cannot write", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    c.dir.chmod(0o555)
    return c.ffl("train", *TINY), lambda p: expect_error(p, 2)


# Interrupted after epoch 1 three ways: the same run, the same rerun; SIGKILL leaves no line and a
# stale lock file, Ctrl-C and SIGTERM end in one line naming the way on.
for _name, _sig, _to, _who, _said in [
    ("train_sigint_resume", signal.SIGINT, to_group, "the process group", "Ctrl-C (SIGINT to the group)"),
    ("train_sigterm_resume", signal.SIGTERM, to_process, "ffl", "SIGTERM to ffl"),
    ("train_sigkill_rerun", signal.SIGKILL, to_group, "the group", "SIGKILL to the group (stale lock file left)"),
]:

    def _interrupted(c, sig=_sig, to=_to, who=_who):
        c.use("medium")
        p = c.ffl_signal("train", *MEDIUM, trigger=r"epoch 1/3", action=to(sig),
                         what=f"{sig.name} to {who} after `epoch 1/3`")  # fmt: skip

        def check(p):
            if not p.triggered:
                return ["the signal never fired"]
            why = [] if sig == signal.SIGKILL else expect_error(p, 130, ["resume"]) + absent(c, "models/model.pt")
            why += present(c, "checkpoints/last.pt")
            again = c.ffl("train", *MEDIUM)
            return why + [f"rerun: {w}" for w in expect_ok(again, stdout=["resuming"])] + present(c, "models/model.pt")

        return p, check

    expected = "the rerun resumes and finishes (exit 0)" if _sig == signal.SIGKILL else (
        "exit 130, one line; the rerun resumes and finishes")  # fmt: skip
    case(_name, "train", "$MEDIUM prepared data (3 epochs)", f"{_said} after epoch 1: {expected}")(_interrupted)


@case("train_concurrent", "train", "$MEDIUM prepared data; a first `ffl train` (6 epochs) running",
      "a second `ffl train` in the same folder: exit 2, says another training is running")  # fmt: skip
def _(c):
    c.use("medium")
    second: list[Proc] = []
    first = c.ffl_signal("train", *MEDIUM, "-S", "train.epochs=6", trigger=r"epoch 1/6",
                         action=lambda proc: (second.append(c.ffl("train", *MEDIUM, "-S", "train.epochs=6")),
                                              os.killpg(proc.pid, signal.SIGINT)),
                         what="then, while it runs, the same command again")  # fmt: skip

    def check(_):
        if not second:
            return ["the second command never ran"]
        return expect_error(second[0], 2, ["another training"])

    return first, check


@case("train_disk_full_checkpoint", "train", "tiny prepared data; checkpoints/ on a 160 KiB tmpfs",
      "exit 1, one line: disk full, names checkpoints/last.pt; no model written")  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl_in_tmpfs("checkpoints", "160k", "train", *TINY, "-S", "train.epochs=2")
    return p, lambda p: expect_error(p, 1, ["disk full", "checkpoints"]) + absent(c, "models/model.pt")


@case("train_disk_full_model", "train", "tiny prepared data; models/ on a 100 KiB tmpfs (model.pt is ~600 KiB)",
      "exit 1, one line: disk full, names models/model.pt; the checkpoint kept to resume")  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl_in_tmpfs("models", "100k", "train", *TINY)
    return p, lambda p: expect_error(p, 1, ["disk full", "model.pt"]) + present(c, "checkpoints/last.pt")


# ---- DDP (train.processes)


@case("ddp_two_processes", "train (DDP)", "tiny prepared data", "train.processes=2: exit 0, model saved, no chatter")
def _(c):
    c.use("prepared")
    p = c.ffl("train", *TINY, "-S", "train.processes=2")
    return p, lambda p: expect_ok(p) + present(c, "models/model.pt")


@case("ddp_rank_killed", "train (DDP)", "$MEDIUM prepared data, train.processes=2",
      "SIGKILL to rank 1 after epoch 1: exit 1, last line names process 1 and signal 9; rerun resumes")  # fmt: skip
def _(c):
    c.use("medium")
    ddp = [*MEDIUM, "-S", "train.processes=2"]

    def kill_rank1(proc):
        pids = tagged_pids(c.tag, 1)
        if pids:
            os.kill(pids[0], signal.SIGKILL)

    p = c.ffl_signal("train", *ddp, trigger=r"epoch 1/3", action=kill_rank1,
                     what="SIGKILL to the rank-1 process after `epoch 1/3`")  # fmt: skip

    def check(p):
        if not p.triggered:
            return ["the signal never fired"]
        why = expect_error(p, 1, ["process 1", "signal 9"], prior_errors=True)
        again = c.ffl("train", *ddp)
        why += [f"rerun: {w}" for w in expect_ok(again, stdout=["resuming"])]
        return why

    return p, check


@case("ddp_ctrl_c", "train (DDP)", "$MEDIUM prepared data, train.processes=2",
      "Ctrl-C (SIGINT to the group) after epoch 1: exit 130, ONE error line")  # fmt: skip
def _(c):
    c.use("medium")
    p = c.ffl_signal("train", *MEDIUM, "-S", "train.processes=2", trigger=r"epoch 1/3",
                     action=to_group(signal.SIGINT), what="SIGINT to the process group after `epoch 1/3`")  # fmt: skip
    return p, lambda p: expect_error(p, 130, ["resume"]) if p.triggered else ["the signal never fired"]


@case(
    "ddp_resume_single_process_checkpoint",
    "train (DDP)",
    "an interrupted ONE-process $MEDIUM checkpoint",
    "train.processes=2: exit 2, names train.processes (1 -> 2)",
)
def _(c):
    c.use("checkpoint")
    p = c.ffl("train", *MEDIUM, "-S", "train.processes=2")
    return p, lambda p: expect_error(p, 2, anywhere=["train.processes"], prior_errors=True)


@case("ddp_garbage_checkpoint", "train (DDP)", "tiny prepared data; checkpoints/last.pt = random bytes",
      "train.processes=2: exit 2, names checkpoints/last.pt")  # fmt: skip
def _(c):
    c.use("prepared")
    c.write("checkpoints/last.pt", os.urandom(5000))
    p = c.ffl("train", *TINY, "-S", "train.processes=2")
    return p, lambda p: expect_error(p, 2, anywhere=["checkpoints/last.pt"], prior_errors=True)


@case("ddp_not_prepared", "train (DDP)", "params.yaml only", "train.processes=2: exit 2 before launching, one line",
      light=True)  # fmt: skip
def _(c):
    c.use("params")
    return c.ffl("train", *TINY, "-S", "train.processes=2"), lambda p: expect_error(p, 2, ["prepare"])


# ---- evaluate


@case("evaluate_no_model", "evaluate", "tiny prepared data, no model", "exit 2, names models/model.pt", light=True)
def _(c):
    c.use("prepared")
    p = c.ffl("evaluate", *TINY)
    return p, lambda p: expect_error(p, 2, ["models/model.pt"]) + absent(c, "metrics/test.json", "plots/cam.png")


@case("evaluate_model_truncated", "evaluate", "tiny trained model cut to a third",
      "exit 2, names models/model.pt; no metrics written", light=True)  # fmt: skip
def _(c):
    c.use("trained")
    m = c.p("models/model.pt")
    m.write_bytes(m.read_bytes()[: m.stat().st_size // 3])
    p = c.ffl("evaluate", *TINY)
    return p, lambda p: expect_error(p, 2, ["models/model.pt"]) + absent(c, "metrics/test.json")


@case("evaluate_model_runs_code", "evaluate",
      "models/model.pt: a torch file whose pickle calls os.system('touch PWNED')",
      "exit 2, names models/model.pt; PWNED never created", light=True)  # fmt: skip
def _(c):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {c.p('PWNED')}",))

    c.use("prepared")
    c.p("models").mkdir()
    torch.save({"format": "ffl-model-v1", "spec": {}, "state_dict": {"x": Evil()}}, c.p("models/model.pt"))
    p = c.ffl("evaluate", *TINY)
    return p, lambda p: expect_error(p, 2, ["models/model.pt"]) + absent(c, "PWNED")


@case("evaluate_model_missing_weight", "evaluate", "tiny trained model with one state_dict entry removed",
      "exit 2, names models/model.pt", light=True)  # fmt: skip
def _(c):
    import torch

    c.use("trained")
    obj = torch.load(c.p("models/model.pt"), weights_only=True)
    obj["state_dict"].pop(next(iter(obj["state_dict"])))
    torch.save(obj, c.p("models/model.pt"))
    return c.ffl("evaluate", *TINY), lambda p: expect_error(p, 2, ["models/model.pt"])


@case("evaluate_other_method", "evaluate", "tiny trained FFL model",
      "-S method.name=dml: exit 2, says the model was trained with other params", light=True)  # fmt: skip
def _(c):
    c.use("trained")
    p = c.ffl("evaluate", *TINY, "-S", "method.name=dml")
    return p, lambda p: expect_error(p, 2, ["models/model.pt"]) + absent(c, "metrics/test.json")


@case("evaluate_metrics_readonly", "evaluate", "tiny trained model; metrics/ chmod 555",
      "exit 2 (or 1), names metrics; no plots written either", light=True)  # fmt: skip
def _(c):
    c.use("trained")
    c.p("metrics").mkdir()
    c.p("metrics").chmod(0o555)
    p = c.ffl("evaluate", *TINY)
    return p, lambda p: expect_error(p, (1, 2), ["metrics"]) + absent(c, "plots/cam.png", "plots/confusion.json")


@case(
    "evaluate_batch_of_one", "evaluate", "tiny trained model", "evaluate.batch_size=1: valid, exit 0, metrics written"
)
def _(c):
    c.use("trained")
    p = c.ffl("evaluate", *TINY, "-S", "evaluate.batch_size=1")
    return p, lambda p: expect_ok(p, stdout=["top1_err"]) + present(c, "metrics/test.json", "plots/cam.png")


@case("evaluate_disk_full_metrics", "evaluate", "tiny trained model, no earlier metrics; metrics/ on a full tmpfs",
      "exit 1, one line: disk full; the three results all absent (none half-written)")  # fmt: skip
def _(c):
    c.use("trained")
    p = c.ffl_in_tmpfs("metrics", "64k", "evaluate", *TINY, fill=True)
    return p, lambda p: expect_error(p, 1, ["disk full"]) + absent(c, "plots/confusion.json", "plots/cam.png")


# ---- export


@case("export_no_model", "export", "params.yaml only", "exit 2, names models/model.pt", light=True)
def _(c):
    c.use("params")
    return c.ffl("export"), lambda p: expect_error(p, 2, ["models/model.pt"]) + absent(c, "models/export")


@case("export_unknown_classifier", "export", "tiny trained model", "--classifier sub7: exit 2, names sub7", light=True)
def _(c):
    c.use("trained")
    return c.ffl("export", "--classifier", "sub7", "--out", "x"), lambda p: expect_error(p, 2, ["sub7"]) + absent(
        c, "x")  # fmt: skip


@case("export_unknown_format", "export", "tiny trained model", "--format tflite: exit 2, names tflite", light=True)
def _(c):
    c.use("trained")
    p = c.ffl("export", "--format", "tflite", "--out", "x")
    return p, lambda p: expect_error(p, 2, ["tflite"]) + absent(c, "x")


@case("export_out_is_project", "export", "tiny trained model", "--out .: exit 2, refuses to replace the project",
      light=True)  # fmt: skip
def _(c):
    c.use("trained")
    return c.ffl("export", "--out", "."), lambda p: expect_error(p, 2, ["--out"]) + present(c, "params.yaml")


@case("export_out_foreign_folder", "export", "tiny trained model; thesis/ holds thesis.tex",
      "--out thesis: exit 2, names it; thesis.tex intact", light=True)  # fmt: skip
def _(c):
    c.use("trained")
    c.write("thesis/thesis.tex", "\\documentclass{article}\n")
    p = c.ffl("export", "--out", "thesis")
    return p, lambda p: expect_error(p, 2, ["thesis"]) + present(c, "thesis/thesis.tex")


@case("export_out_readonly_parent", "export", "tiny trained model; ro/ chmod 555",
      "--out ro/export: exit 2 (or 1), names it; nothing written", light=True)  # fmt: skip
def _(c):
    c.use("trained")
    c.p("ro").mkdir()
    c.p("ro").chmod(0o555)
    p = c.ffl("export", "--out", "ro/export")
    return p, lambda p: expect_error(p, (1, 2), ["ro"]) + absent(c, "ro/export")


@case("export_model_newline_name", "export", "params.yaml only",
      "--model 'no<newline>such.pt': exit 2, ONE error line", light=True)  # fmt: skip
def _(c):
    c.use("params")
    return c.ffl("export", "--model", "no\nsuch.pt"), lambda p: expect_error(p, 2, ["such.pt"])


@case("export_unicode_out", "export", "tiny trained model",
      "--out 'exp ☃/é' --classifier fused --format onnx: valid, exit 0, fused.onnx written")  # fmt: skip
def _(c):
    c.use("trained")
    p = c.ffl("export", "--out", "exp ☃/é", "--classifier", "fused", "--format", "onnx")
    return p, lambda p: expect_ok(p) + present(c, "exp ☃/é/fused.onnx", "exp ☃/é/model.json")


@case("export_interrupted", "export", "tiny trained model with an earlier export in models/export",
      "SIGINT while it writes: exit 130, one line; models/export as before, no staging folder left")  # fmt: skip
def _(c):
    c.use("trained")
    old = digest(c.p("models/export"))
    staging = lambda: any(f.name.startswith(".export.new") for f in c.p("models").iterdir())
    p = c.ffl_signal("export", trigger=staging, action=to_group(signal.SIGINT), delay=0.5,
                     what="SIGINT to the group once models/.export.new-* appears")  # fmt: skip

    def check(p):
        why = expect_error(p, 130) if p.triggered else ["the signal never fired"]
        if digest(c.p("models/export")) != old:
            why.append("models/export changed")
        left = [f.name for f in c.p("models").iterdir() if f.name.startswith(".export")]
        return why + ([f"staging folder left: {left[0]}"] if left else [])

    return p, check


@case("export_disk_full", "export", "tiny trained model; m/ on a 100 KiB tmpfs",
      "--out m/export: exit 1 (or 2), one line naming it; nothing left in m/")  # fmt: skip
def _(c):
    c.use("trained")
    p = c.ffl_in_tmpfs("m", "100k", "export", "--out", "m/export")
    return p, lambda p: expect_error(p, (1, 2), ["m/export"])


# ---- predict


def image(path: Path, mode="RGB", size=(40, 30), fmt=None, **kw):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (200, 30, 30), "RGBA": (0, 200, 0, 128), "CMYK": (0, 100, 200, 0), "1": 1, "L": 128,
             "I;16": 40000}[mode]  # fmt: skip
    Image.new(mode, size, color).save(path, fmt, **kw)
    return path


@case("predict_missing_file", "predict", "tiny trained model", "nope.png: exit 2, names nope.png", light=True)
def _(c):
    c.use("trained")
    return c.ffl("predict", "nope.png"), lambda p: expect_error(p, 2, anywhere=["nope.png"])


@case("predict_empty_file", "predict", "tiny trained model; empty.png is 0 bytes", "exit 2, names empty.png",
      light=True)  # fmt: skip
def _(c):
    c.use("trained")
    c.write("empty.png", b"")
    return c.ffl("predict", "empty.png"), lambda p: expect_error(p, 2, anywhere=["empty.png"])


@case("predict_truncated_beside_good", "predict", "tiny trained model; good.png and trunc.png (first 300 bytes)",
      "exit 0: good.png predicted, trunc.png named on stderr and skipped")  # fmt: skip
def _(c):
    from PIL import Image

    c.use("trained")
    image(c.p("good.png"))
    Image.effect_noise((200, 200), 60).convert("RGB").save(c.p("full.png"))
    c.write("trunc.png", c.p("full.png").read_bytes()[:300])
    p = c.ffl("predict", "good.png", "trunc.png")
    return p, lambda p: expect_ok(p, stdout=["good.png"], stderr=["trunc.png"])


@case("predict_decompression_bomb", "predict", "tiny trained model; big.png is 10000 x 9000 (90 Mpx, 11 KB)",
      "exit 0 (predicted) or skipped with ffl's own line; no Python warning on stderr", timeout=150)  # fmt: skip
def _(c):
    c.use("trained")
    image(c.p("big.png"), "1", (10000, 9000))
    image(c.p("good.png"))
    p = c.ffl("predict", "big.png", "good.png", timeout=140)
    return p, lambda p: expect_ok(p, stdout=["good.png"])


@case("predict_symlink_loop", "predict", "tiny trained model; pics/ holds good.png and loop -> . (a symlink cycle)",
      "ends (no endless walk): exit 0, good.png predicted", timeout=90)  # fmt: skip
def _(c):
    c.use("trained")
    image(c.p("pics/good.png"))
    c.p("pics/loop").symlink_to(".")
    p = c.ffl("predict", "pics", timeout=80)
    return p, lambda p: expect_ok(p, stdout=["good.png"])


@case("predict_odd_images", "predict",
      "tiny trained model; 1x1 PNG, 16-bit grey PNG, CMYK JPEG, RGBA PNG, 3000x2 panorama",
      "valid: exit 0, one line per image (5)")  # fmt: skip
def _(c):
    c.use("trained")
    image(c.p("odd/a_1x1.png"), size=(1, 1))
    image(c.p("odd/b_grey16.png"), "I;16")
    image(c.p("odd/c_cmyk.jpg"), "CMYK")
    image(c.p("odd/d_alpha.png"), "RGBA")
    image(c.p("odd/e_pano.png"), size=(3000, 2))
    p = c.ffl("predict", "odd", "--json")

    def check(p):
        why = expect_ok(p)
        rows = [line for line in p.out.splitlines() if line.strip()]
        if len(rows) != 5:
            why.append(f"{len(rows)} result lines, expected 5")
        return why

    return p, check


@case("predict_unknown_classifier", "predict", "tiny trained model", "--classifier sub9: exit 2, names sub9",
      light=True)  # fmt: skip
def _(c):
    c.use("trained")
    image(c.p("good.png"))
    return c.ffl("predict", "good.png", "--classifier", "sub9"), lambda p: expect_error(p, 2, ["sub9"])


@case("predict_fifo_input", "predict", "tiny trained model; pipe.png is a FIFO",
      "exit 2 without blocking, names pipe.png", light=True, timeout=60)  # fmt: skip
def _(c):
    c.use("trained")
    os.mkfifo(c.p("pipe.png"))
    return c.ffl("predict", "pipe.png", timeout=50), lambda p: expect_error(p, 2, anywhere=["pipe.png"])


@case("predict_unreadable_subfolder", "predict", "tiny trained model; pics/good.png and pics/secret/ chmod 000",
      "exit 0, good.png predicted (the unreadable folder named or skipped)", light=True)  # fmt: skip
def _(c):
    c.use("trained")
    image(c.p("pics/good.png"))
    image(c.p("pics/secret/x.png"))
    c.p("pics/secret").chmod(0)
    return c.ffl("predict", "pics"), lambda p: expect_ok(p, stdout=["good.png"])


@case("predict_model_classes_mismatch", "predict", "tiny trained model whose record lists 3 class names (10 outputs)",
      "exit 2, names models/model.pt (record malformed)", light=True)  # fmt: skip
def _(c):
    import torch

    c.use("trained")
    obj = torch.load(c.p("models/model.pt"), weights_only=True)
    obj["dataset"]["classes"] = ["cat", "dog", "emu"]
    torch.save(obj, c.p("models/model.pt"))
    image(c.p("good.png"))
    return c.ffl("predict", "good.png"), lambda p: expect_error(p, 2, ["models/model.pt"])


@case("predict_unicode_json", "predict", "tiny trained model; '猫 ☃.png'",
      "--json --top 1000: valid, exit 0, one JSON line naming the file, 10 classes", light=True)  # fmt: skip
def _(c):
    c.use("trained")
    image(c.p("猫 ☃.png"))
    p = c.ffl("predict", "猫 ☃.png", "--json", "--top", "1000")

    def check(p):
        why = expect_ok(p)
        try:
            row = json.loads(p.out.strip().splitlines()[0])
            if row["file"] != "猫 ☃.png" or len(row["top"]) != 10:
                why.append(f"unexpected JSON: {p.out[:120]!r}")
        except (ValueError, IndexError, KeyError, TypeError):
            why.append(f"stdout is not one JSON line: {p.out[:120]!r}")
        return why

    return p, check


# ---- tune


@case("tune_address_auto_no_cluster", "tune", "tiny prepared data, no Ray cluster running",
      "--address auto: exit 2, one line naming --address auto", timeout=150)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("tune", *TINY, "--trials", "1", "--address", "auto", timeout=140)
    return p, lambda p: expect_error(p, 2, ["--address"]) + absent(c, "tune/summary.json")


@case("tune_address_unreachable", "tune", "tiny prepared data", "--address 127.0.0.1:1: exit 2, names the address",
      light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("tune", *TINY, "--trials", "1", "--address", "127.0.0.1:1")
    return p, lambda p: expect_error(p, 2, ["127.0.0.1:1"])


@case("tune_preset_unknown_row", "tune", "params.yaml and configs/",
      "--preset cifar10-cpu/resnet9000: exit 2, lists rows",
      light=True)  # fmt: skip
def _(c):
    c.use("configs")
    return c.ffl("tune", "--preset", "cifar10-cpu/resnet9000"), lambda p: expect_error(p, 2, ["resnet9000"])


@case("tune_trials_zero", "tune", "tiny prepared data", "--trials 0: exit 2, names tune.trials", light=True)
def _(c):
    c.use("prepared")
    return c.ffl("tune", *TINY, "--trials", "0"), lambda p: expect_error(p, 2, ["tune.trials"])


@case("tune_space_negative_log", "tune", "tiny prepared data",
      "-S tune.space.train.lr.low=-1 (loguniform): exit 2, names tune.space.train.lr", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("tune", *TINY, "-S", "tune.space.train.lr.low=-1")
    return p, lambda p: expect_error(p, 2, ["tune.space.train.lr"])


@case("tune_resources_too_big", "tune", "tiny prepared data (2-CPU machine)",
      "-S tune.resources.cpu=1000: exit 2, names tune.resources.cpu", timeout=150)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("tune", *TINY, "--trials", "1", "-S", "tune.resources.cpu=1000", timeout=140)
    return p, lambda p: expect_error(p, 2, ["tune.resources.cpu"])


@case("tune_resume_nothing", "tune", "tiny prepared data, no earlier search", "--resume: exit 2, no search to resume",
      light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    return c.ffl("tune", *TINY, "--resume"), lambda p: expect_error(p, 2, ["resume"])


@case("tune_earlier_search_there", "tune", "tiny prepared data; tune/ray/search/ exists",
      "no flag: exit 2, says --resume or --fresh", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    c.p("tune/ray/search").mkdir(parents=True)
    return c.ffl("tune", *TINY, "--trials", "1"), lambda p: expect_error(p, 2, ["--resume", "--fresh"])


@case("tune_resume_and_fresh", "tune", "tiny prepared data; tune/ray/search/ holds junk",
      "--resume --fresh together (contradictory): exit 2, one line", timeout=150)  # fmt: skip
def _(c):
    c.use("prepared")
    c.write("tune/ray/search/junk.txt", "junk\n")
    p = c.ffl("tune", *TINY, "--trials", "1", "--resume", "--fresh", timeout=140)
    return p, lambda p: expect_error(p, 2)


@case("tune_resume_corrupt_state", "tune", "tiny prepared data; tune/ray/search/ holds a garbage experiment_state",
      "--resume: exit 2, one line naming tune/ray/search", timeout=150)  # fmt: skip
def _(c):
    c.use("prepared")
    c.write("tune/ray/search/experiment_state-2020-01-01_00-00-00.json", "{not json")
    c.write("tune/ray/search/tuner.pkl", os.urandom(300))
    p = c.ffl("tune", *TINY, "--trials", "1", "--resume", timeout=140)
    return p, lambda p: expect_error(p, 2, ["tune/ray/search"])


@case("tune_out_is_file", "tune", "tiny prepared data; results.txt is a file",
      "--out results.txt: exit 2, names it; the file intact", light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    c.write("results.txt", "mine\n")
    p = c.ffl("tune", *TINY, "--trials", "1", "--out", "results.txt")
    return p, lambda p: expect_error(p, 2, ["results.txt"]) + (
        [] if c.p("results.txt").read_text() == "mine\n" else ["results.txt changed"])  # fmt: skip


@case("tune_storage_unknown_scheme", "tune", "tiny prepared data",
      "-S tune.storage=ftp://x/y: exit 2, names tune.storage",
      light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("tune", *TINY, "--trials", "1", "-S", "tune.storage=ftp://x/y")
    return p, lambda p: expect_error(p, 2, ["tune.storage"])


@case("tune_metric_unknown", "tune", "tiny prepared data",
      "-S tune.metric=val/top1_err/nope: exit 2, names tune.metric",
      light=True)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("tune", *TINY, "--trials", "1", "-S", "tune.metric=val/top1_err/nope")
    return p, lambda p: expect_error(p, 2, ["tune.metric"])


@case("tune_two_trials", "tune", "tiny prepared data",
      "--trials 2 (1-epoch trials): exit 0, tune/summary.json, no chatter on stderr", timeout=180)  # fmt: skip
def _(c):
    c.use("prepared")
    p = c.ffl("tune", *TINY, "--trials", "2", "-S", "tune.scheduler.grace_period=1", timeout=170)
    return p, lambda p: expect_ok(p) + present(c, "tune/summary.json", "tune/best_params.yaml")


@case("tune_sigint_resume", "tune", "$MEDIUM prepared data, 3 trials of 2 epochs, one at a time",
      "Ctrl-C after the first trial: exit 130, one line (--resume); `--resume` finishes (exit 0)",
      timeout=300)  # fmt: skip
def _(c):
    c.use("medium")
    args = ["tune", *MEDIUM, "--trials", "3", "-S", "tune.epochs=2", "-S", "tune.max_concurrent=1",
            "-S", "tune.scheduler.name=fifo"]  # fmt: skip
    p = c.ffl_signal(*args, trigger=r"\[tune\] trial", action=to_group(signal.SIGINT), timeout=200,
                     what="SIGINT to the group after the first `[tune] trial` line")  # fmt: skip

    def check(p):
        if not p.triggered:
            return ["the signal never fired"]
        why = expect_error(p, 130, ["--resume"]) + absent(c, "tune/summary.json")
        again = c.ffl(*args, "--resume", timeout=200)
        why += [f"--resume: {w}" for w in expect_ok(again)] + present(c, "tune/summary.json")
        return why

    return p, check


# ---- reproduce


def table_file(c: Ctx, text: str, name="t.yaml") -> str:
    c.write(name, text)
    return name


@case("reproduce_not_a_repo", "reproduce", "params.yaml and configs/, no git",
      "cifar10-cpu --rows vanilla --seeds 0: exit 2, says it needs the git + DVC repository", light=True)  # fmt: skip
def _(c):
    c.use("configs")
    p = c.ffl("reproduce", "cifar10-cpu", "--rows", "vanilla", "--seeds", "0")
    return p, lambda p: expect_error(p, 2, ["git"])


@case("reproduce_unknown_table", "reproduce", "params.yaml and configs/", "exit 2, names the table and lists them",
      light=True)  # fmt: skip
def _(c):
    c.use("configs")
    return c.ffl("reproduce", "cifar11-cpu", "--dry-run"), lambda p: expect_error(p, 2, ["cifar11-cpu"])


@case("reproduce_unknown_row", "reproduce", "params.yaml and configs/", "--rows resnet9000: exit 2, lists the rows",
      light=True)  # fmt: skip
def _(c):
    c.use("configs")
    p = c.ffl("reproduce", "cifar10-cpu", "--rows", "resnet9000", "--dry-run")
    return p, lambda p: expect_error(p, 2, ["resnet9000"])


@case("reproduce_negative_seed", "reproduce", "params.yaml and configs/", "--seeds -1: exit 2, names the seed",
      light=True)  # fmt: skip
def _(c):
    c.use("configs")
    p = c.ffl("reproduce", "cifar10-cpu", "--seeds", "-1", "--dry-run")
    return p, lambda p: expect_error(p, 2, ["seed"])


@case("reproduce_tables_missing", "reproduce", "params.yaml only", "--tables nope.yaml: exit 2, names nope.yaml",
      light=True)  # fmt: skip
def _(c):
    c.use("params")
    return c.ffl("reproduce", "t", "--tables", "nope.yaml", "--dry-run"), lambda p: expect_error(p, 2, ["nope.yaml"])


@case("reproduce_tables_bad_name", "reproduce", "params.yaml; t.yaml has a table named 'my table'",
      "exit 2, names the table name", light=True)  # fmt: skip
def _(c):
    c.use("params")
    t = table_file(c, "my table:\n  title: x\n  base: params.yaml\n  compare: a\n  rows:\n    a: {set: []}\n")
    return c.ffl("reproduce", "my table", "--tables", t, "--dry-run"), lambda p: expect_error(p, 2, ["my table"])


@case("reproduce_table_sets_seed", "reproduce", "params.yaml; a table whose row sets seed=3",
      "exit 2, says the seed comes from --seeds", light=True)  # fmt: skip
def _(c):
    c.use("params")
    t = table_file(c, "t:\n  title: x\n  base: params.yaml\n  compare: a\n  rows:\n    a: {set: [seed=3]}\n")
    return c.ffl("reproduce", "t", "--tables", t, "--dry-run"), lambda p: expect_error(p, 2, ["seed"])


@case("reproduce_dry_run", "reproduce", "params.yaml and configs/",
      "cifar10-cpu --dry-run: valid, exit 0, lists the 24 runs", light=True)  # fmt: skip
def _(c):
    c.use("configs")
    return c.ffl("reproduce", "cifar10-cpu", "--dry-run"), lambda p: expect_ok(p, stdout=["cifar10-cpu"])


@case("reproduce_dirty_tree", "reproduce", "git+DVC clone of the project; pipeline/cli.py edited, not committed",
      "exit 2, says uncommitted changes (names the file)", light=True)  # fmt: skip
def _(c):
    c.use("repo")
    with open(c.p("pipeline/cli.py"), "a") as f:
        f.write("# local edit\n")
    p = c.ffl("reproduce", "tiny", "--tables", "configs/tiny.yaml", "--seeds", "0")
    return p, lambda p: expect_error(p, 2, ["uncommitted", "pipeline/cli.py"])


@case("reproduce_git_without_dvc", "reproduce", "params.yaml and configs/ committed to git, no dvc init",
      "exit 2, says it needs the git + DVC repository", light=True)  # fmt: skip
def _(c):
    c.use("configs")
    c.write("configs/tiny.yaml", TINY_TABLE)
    git_init(c, commit=True, dvc_init=False)
    p = c.ffl("reproduce", "tiny", "--tables", "configs/tiny.yaml", "--seeds", "0")
    return p, lambda p: expect_error(p, 2, ["DVC"])


@case("reproduce_no_commit", "reproduce", "git init + dvc init, nothing committed",
      "exit 2, one line (no HEAD to record against)", light=True)  # fmt: skip
def _(c):
    c.use("configs")
    c.write("configs/tiny.yaml", TINY_TABLE)
    git_init(c, commit=False, dvc_init=True)
    p = c.ffl("reproduce", "tiny", "--tables", "configs/tiny.yaml", "--seeds", "0", timeout=100)
    return p, lambda p: expect_error(p, 2)


@case("reproduce_address_auto", "reproduce", "git+DVC clone of the project with the tiny table",
      "--address auto, no cluster: exit 2, one line naming --address auto", timeout=150)  # fmt: skip
def _(c):
    c.use("repo")
    p = c.ffl("reproduce", "tiny", "--tables", "configs/tiny.yaml", "--seeds", "0", "--address", "auto", timeout=140)
    return p, lambda p: expect_error(p, 2, ["--address"])


@case("reproduce_tiny_table", "reproduce", "git+DVC clone of the project with the tiny table (1 row, vanilla)",
      "--seeds 0: exit 0, recorded as experiment tiny-vanilla-s0", timeout=260)  # fmt: skip
def _(c):
    build = FIXTURES.get("repo_exp")
    p = FIXTURES.procs["repo_exp_build"][0]
    c.commands.append(f"(in a fresh clone {build.name}) " + display(p.args))
    return p, lambda p: expect_ok(p, stdout=["tiny-vanilla-s0"])


@case("reproduce_rerun_skips", "reproduce", "the clone after `ffl reproduce tiny --seeds 0`",
      "the same command again: exit 0, says recorded already", timeout=150)  # fmt: skip
def _(c):
    c.use("repo_exp")
    p = c.ffl("reproduce", "tiny", "--tables", "configs/tiny.yaml", "--seeds", "0", timeout=140)
    return p, lambda p: expect_ok(p, stdout=["recorded already"])


@case("reproduce_failing_run", "reproduce",
      "git+DVC clone; a committed table whose row asks train.batch_size=1000 (90 images)",
      "exit 1: `<run>: failed: <reason>` then one error line; the reason names train.batch_size",
      timeout=200)  # fmt: skip
def _(c):
    c.use("repo")
    bad = TINY_TABLE.replace("[method.name=vanilla]", "[method.name=vanilla, train.batch_size=1000]")
    c.write("configs/bad.yaml", bad)
    subprocess.run(["git", "add", "-A"], cwd=c.dir, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "bad"], cwd=c.dir, check=True, capture_output=True, env=c.env)
    p = c.ffl("reproduce", "tiny", "--tables", "configs/bad.yaml", "--seeds", "0", timeout=190)
    return (
        p,
        lambda p: (
            expect_error(p, 1, ["failed"])
            + ([] if "train.batch_size" in p.out + p.err else ["the run's reason (train.batch_size) is not shown"])
        ),
    )


# ---- exps


@case("exps_not_a_repo", "exps", "empty dir", "exit 2, one line (not a DVC repository)", light=True)
def _(c):
    return c.ffl("exps"), lambda p: expect_error(p, 2, ["dvc"])


@case("exps_git_without_dvc", "exps", "git repo with a commit, no DVC", "exit 2, one line", light=True)
def _(c):
    c.write("README", "x\n")
    git_init(c, commit=True, dvc_init=False)
    return c.ffl("exps"), lambda p: expect_error(p, 2, ["dvc"])


@case("exps_no_commit", "exps", "git init + dvc init, no commit",
      "exit 0 (no experiments) or exit 2 with one line saying to commit", light=True)  # fmt: skip
def _(c):
    git_init(c, commit=False, dvc_init=True)
    return c.ffl("exps"), lambda p: expect_ok_or_error(p, 2)


@case("exps_none_yet", "exps", "git+DVC clone of the project", "exit 0, says no experiments yet", light=True)
def _(c):
    c.use("repo")
    return c.ffl("exps"), lambda p: expect_ok(p, stdout=["no experiments"])


@case("exps_after_reproduce", "exps", "the clone after `ffl reproduce tiny --seeds 0`",
      "exit 0, lists tiny-vanilla-s0 with its error", light=True)  # fmt: skip
def _(c):
    c.use("repo_exp")
    return c.ffl("exps", "--all"), lambda p: expect_ok(p, stdout=["tiny-vanilla-s0"])


@case("exps_corrupt_dvc_config", "exps", "git+DVC clone; .dvc/config overwritten with garbage",
      "exit 2, one line naming .dvc/config", light=True)  # fmt: skip
def _(c):
    c.use("repo")
    c.write(".dvc/config", "[core\nthis is = = not ini\n\x00\x01")
    return c.ffl("exps"), lambda p: expect_error(p, 2, ["config"])


# ---- report


@case("report_not_a_repo", "report", "params.yaml and configs/, no git", "exit 2, one line", light=True)
def _(c):
    c.use("configs")
    return c.ffl("report", "cifar10-cpu"), lambda p: expect_error(p, 2) + absent(c, "reports")


@case("report_one_unknown_of_two", "report", "git+DVC clone with the tiny table",
      "`report tiny nosuch`: exit 2, names nosuch; reports/tiny.* not written", light=True)  # fmt: skip
def _(c):
    c.use("repo")
    p = c.ffl("report", "tiny", "nosuch", "--tables", "configs/tiny.yaml")
    return p, lambda p: expect_error(p, 2, ["nosuch"]) + absent(c, "reports")


@case("report_unknown_override", "report", "git+DVC clone with the tiny table",
      "-S nosuch.key=1: exit 2, names nosuch", light=True)  # fmt: skip
def _(c):
    c.use("repo")
    p = c.ffl("report", "tiny", "--tables", "configs/tiny.yaml", "-S", "nosuch.key=1")
    return p, lambda p: expect_error(p, 2, ["nosuch"]) + absent(c, "reports")


@case("report_reports_readonly", "report", "git+DVC clone; reports/ chmod 555",
      "exit 2 (or 1), one line naming reports; no report files", light=True)  # fmt: skip
def _(c):
    c.use("repo")
    c.p("reports").mkdir()
    c.p("reports").chmod(0o555)
    p = c.ffl("report", "tiny", "--tables", "configs/tiny.yaml")
    return p, lambda p: expect_error(p, (1, 2), ["reports"]) + absent(c, "reports/tiny.md", "reports/tiny.json")


@case("report_no_runs", "report", "git+DVC clone with the tiny table, no experiments",
      "exit 0, reports/tiny.md says no runs yet", light=True)  # fmt: skip
def _(c):
    c.use("repo")
    p = c.ffl("report", "tiny", "--tables", "configs/tiny.yaml")
    return p, lambda p: expect_ok(p, stdout=["no runs yet"]) + present(c, "reports/tiny.md", "reports/tiny.png")


@case("report_after_reproduce", "report", "the clone after `ffl reproduce tiny --seeds 0`",
      "`report tiny tiny` (same table twice): exit 0, the run's error in reports/tiny.md", light=True)  # fmt: skip
def _(c):
    c.use("repo_exp")
    p = c.ffl("report", "tiny", "tiny", "--tables", "configs/tiny.yaml")

    def check(p):
        why = expect_ok(p) + present(c, "reports/tiny.md")
        if not why and "no runs yet" in c.p("reports/tiny.md").read_text():
            why.append("reports/tiny.md has no runs")
        return why

    return p, check


# ---- methods


@case("methods_unknown", "methods", "empty dir", "`methods distill`: exit 2, lists the methods", light=True)
def _(c):
    return c.ffl("methods", "distill"), lambda p: expect_error(p, 2, ["distill", "ffl"])


@case("methods_empty_name", "methods", "empty dir", "`methods ''`: exit 2, one line", light=True)
def _(c):
    return c.ffl("methods", ""), lambda p: expect_error(p, 2)


@case("methods_one", "methods", "empty dir", "`methods dml`: exit 0, its settings", light=True)
def _(c):
    return c.ffl("methods", "dml"), lambda p: expect_ok(p, stdout=["temperature"])


@case("methods_write_with_name", "methods", "empty dir", "`methods ffl --write x.md`: exit 2, names --write; no x.md",
      light=True)  # fmt: skip
def _(c):
    return c.ffl("methods", "ffl", "--write", "x.md"), lambda p: expect_error(p, 2, ["--write"]) + absent(c, "x.md")


@case("methods_write_dev_null", "methods", "empty dir", "--write /dev/null: exit 2, not a regular file", light=True)
def _(c):
    return c.ffl("methods", "--write", "/dev/null"), lambda p: expect_error(p, 2, ["/dev/null"])


@case("methods_write_readonly", "methods", "ro/ chmod 555", "--write ro/m.md: exit 2, names ro/m.md", light=True)
def _(c):
    c.p("ro").mkdir()
    c.p("ro").chmod(0o555)
    return c.ffl("methods", "--write", "ro/m.md"), lambda p: expect_error(p, 2, ["ro/m.md"]) + absent(c, "ro/m.md")


# ---- bench


@case("bench_unknown_arch", "bench", "empty dir", "--arch resnet7: exit 2, names --arch", light=True)
def _(c):
    return c.ffl("bench", "--arch", "resnet7"), lambda p: expect_error(p, 2, ["--arch"])


@case("bench_device_cuda", "bench", "empty dir (no GPU)", "--device cuda: exit 2, names --device", light=True)
def _(c):
    return c.ffl("bench", "--device", "cuda"), lambda p: expect_error(p, 2, ["--device"])


@case("bench_unknown_method", "bench", "empty dir", "--methods distill: exit 2, names distill", light=True)
def _(c):
    return c.ffl("bench", "--methods", "distill"), lambda p: expect_error(p, 2, ["distill"])


@case("bench_json_unwritable", "bench", "empty dir", "--json /nonexistent/dir/b.json: exit 2 before timing",
      light=True)  # fmt: skip
def _(c):
    p = c.ffl("bench", "--arch", "resnet8", "--json", "/nonexistent/dir/b.json")
    return p, lambda p: expect_error(p, 2, ["--json"])


@case(
    "bench_tiny",
    "bench",
    "empty dir",
    "--arch resnet8 --batch-size 4 --steps 1 --warmup 0 --ref-workers 0 --num-classes 10 --json b.json: exit 0",
)
def _(c):
    p = c.ffl("bench", "--arch", "resnet8", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--ref-workers", "0",
              "--num-classes", "10", "--json", "b.json")  # fmt: skip
    return p, lambda p: expect_ok(p) + present(c, "b.json")


@case("bench_huge_batch", "bench", "empty dir; the process limited to 8 GiB of address space (ulimit -v)",
      "--batch-size 100000000: exit 1, one line: out of memory")  # fmt: skip
def _(c):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    p = c.run([FFL, "bench", "--arch", "resnet8", "--batch-size", "100000000", "--steps", "1", "--warmup", "0",
               "--ref-workers", "0", "--num-classes", "10"], preexec=limit,
              shown="(ulimit -v 8388608; ffl bench --arch resnet8 --batch-size 100000000 --steps 1 --warmup 0 "
                    "--ref-workers 0 --num-classes 10)")  # fmt: skip
    return p, lambda p: expect_error(p, 1, ["out of memory"])


@case("bench_interrupted", "bench", "empty dir",
      "Ctrl-C 2 s into a long timing: exit 130, one line; --json file not written")  # fmt: skip
def _(c):
    p = c.ffl_signal("bench", "--arch", "resnet8", "--batch-size", "8", "--steps", "100000", "--warmup", "0",
                     "--ref-workers", "0", "--num-classes", "10", "--json", "b.json", trigger=r"ffl bench on",
                     action=to_group(signal.SIGINT), delay=2.0,
                     what="SIGINT to the group 2 s after its first line")  # fmt: skip
    return p, lambda p: (expect_error(p, 130) if p.triggered else ["the signal never fired"]) + absent(c, "b.json")


# -- running the sweep --------------------------------------------------------------------------


def run_case(k: Case, keep: bool) -> Result:
    c = Ctx(k.name)
    start = time.monotonic()
    try:
        proc, check = k.fn(c)
        why = check(proc)
    except Skipped as e:
        c.cleanup()
        print(f"SKIP {k.name}: {e}", flush=True)
        return Result(k, True, [], [], None, "", "", 0.0, skipped=str(e))
    except Exception as e:  # the sweep's own trouble (a fixture that failed): the case fails with it
        proc, why = None, [f"sweep error: {type(e).__name__}: {str(e)[:300]}"]
    seconds = time.monotonic() - start
    lines = proc.lines if proc else []
    result = Result(k, not why, why, c.commands, proc.rc if proc else None, lines[0] if lines else "",
                    lines[-1] if lines else "", seconds)  # fmt: skip
    if not keep:
        c.cleanup()
    mark = "PASS" if result.passed else "FAIL"
    if SHOW and proc is not None:
        print(f"--- {k.name}: exit {proc.rc}\n--- stdout:\n{proc.out[-3000:]}", flush=True)
        print(f"--- stderr:\n{proc.err[-6000:]}", flush=True)
    print(f"{mark} {k.name} ({seconds:.1f} s)" + ("" if result.passed else f": {'; '.join(why)[:300]}"), flush=True)
    return result


def no_machine_paths(text: str) -> str:
    """The report names no machine's paths: the checkout, the datasets and the temporary folders
    become placeholders."""
    for path, name in ((str(DATASET.parent), "<datasets>"), (str(ROOT), "<repo>"), (tempfile.gettempdir(), "<tmp>")):
        text = text.replace(path, name)
    return text


def cell(text: str, width: int = 400) -> str:
    text = no_machine_paths(text).replace("\n", "⏎").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown(results: list[Result], wall: float, argv: list[str]) -> str:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    passed = sum(r.passed for r in results)
    lines = [
        "# Adversarial sweep of the `ffl` command line",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU (`lscpu | grep 'Model name'`): {cpu.partition(':')[2].strip() or '?'}, {os.cpu_count()} cores, no GPU",
        f"- command: `.venv/bin/python {' '.join(['-m', 'tests.sweeps.adversarial', *argv])}`",
        f"- result: **{passed} of {len(results)} cases pass**; wall time {wall / 60:.1f} min",
        f"- `$TINY` = `{shlex.join(TINY)}`",
        f"- `$MEDIUM` = `{shlex.join(MEDIUM)}`",
        "- every command ran in a fresh `tempfile.mkdtemp()` folder, through `setpriv --inh-caps=-all "
        "--bounding-set=-all` (root without its capabilities, so chmod'ed folders refuse writes)",
        "",
        "| # | case | command | setup | expectation | result | stderr (first / last line) for failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        k = r.case
        res = (
            f"skipped: {r.skipped}"
            if r.skipped
            else "PASS"
            if r.passed
            else f"**FAIL** (exit {r.rc}): " + "; ".join(r.why)
        )
        excerpt = "" if r.passed else f"`{cell(r.first, 200)}` / `{cell(r.last, 300)}`"
        cmd = " ; ".join(f"`{cell(x, 300)}`" for x in r.commands)
        lines.append(f"| {i} | {k.name} | {cmd} | {cell(k.setup)} | {cell(k.expect)} | {cell(res)} | {excerpt} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these cases (names or prefixes)")
    parser.add_argument("--md", type=Path, help="write the results table (Markdown) here")
    parser.add_argument("--json", type=Path, help="write the results (JSON) here")
    parser.add_argument("--keep", action="store_true", help="keep every case's folder")
    parser.add_argument("--list", action="store_true", help="list the cases")
    parser.add_argument("--serial", action="store_true", help="no two light cases side by side")
    parser.add_argument("--show", action="store_true", help="print every case's stdout and stderr")
    args = parser.parse_args()
    global SHOW
    SHOW = args.show
    cases = CASES
    if args.list:
        for k in cases:
            print(f"{k.name:40s} {k.command:14s} {k.expect}")
        return 0
    if args.only:
        cases = [k for k in CASES if any(k.name == o or k.name.startswith(o) for o in args.only)]
        if not cases:
            print(f"no case matches {args.only}", file=sys.stderr)
            return 2
    start = time.monotonic()
    light = [k for k in cases if k.light]
    heavy = [k for k in cases if not k.light]
    results: dict[str, Result] = {}
    for k in heavy:  # one at a time: training, Ray, signals, timing
        results[k.name] = run_case(k, args.keep)
    with concurrent.futures.ThreadPoolExecutor(1 if args.serial else 2) as pool:
        for r in pool.map(lambda k: run_case(k, args.keep), light):
            results[r.case.name] = r
    wall = time.monotonic() - start
    ordered = [results[k.name] for k in cases]
    passed = sum(r.passed for r in ordered)
    print(f"\n{passed} of {len(ordered)} cases pass ({wall / 60:.1f} min)")
    argv = sys.argv[1:]
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown(ordered, wall, [a for a in argv if a != "--keep"]))
    if args.json:
        args.json.write_text(json.dumps([
            {"name": r.case.name, "command": r.case.command, "setup": r.case.setup, "expect": r.case.expect,
             "passed": r.passed, "why": r.why, "commands": r.commands, "rc": r.rc, "first": r.first, "last": r.last,
             "seconds": round(r.seconds, 1)} for r in ordered], indent=1, ensure_ascii=False))  # fmt: skip
    if not args.keep:
        for ctx in FIXTURES.ctxs:
            ctx.cleanup()
    return 0 if passed == len(ordered) else 1


if __name__ == "__main__":
    if Path(sys.prefix).resolve() != VENV.resolve() and os.environ.get("FFL_SWEEP_REEXEC") != "1":
        os.environ["FFL_SWEEP_REEXEC"] = "1"  # the project's environment, whatever python started it
        os.execv(
            str(VENV / "bin" / "python"),
            [str(VENV / "bin" / "python"), "-m", "tests.sweeps.adversarial", *sys.argv[1:]],
        )
    sys.exit(main())
