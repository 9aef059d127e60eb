"""`ffl`: the command line. prepare, train, evaluate and export are dvc.yaml's stages (its cmds
call them: one code path); the others (predict, tune, reproduce, report, exps, methods, bench) are
commands of their own. Every command's failures go through one error boundary."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.boundary import error_boundary, fail
from pipeline.errors import UserError

# Each command imports what it runs inside its own function: `ffl --help`, a refused argument and
# each command start without loading torch, Ray or DVC for the others (the only function-local
# imports of the project's own modules besides Ray workers' and the error boundary's).
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Feature Fusion Learning: prepare, train, evaluate, export, predict, tune, reproduce, report, bench.",
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file (dvc's params.yaml by default)")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-S", help="override a param: section.key=value (as dvc exp run -S)")
]
TablesOpt = Annotated[Path, typer.Option(help="the tables' presets")]


def _version(value: bool):
    if value:
        from importlib.metadata import version

        import torch

        typer.echo(f"ffl {version('ffl')} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
):
    pass  # the options every command shares; the help is the app's


def once(option: str, values: list | None) -> list | None:
    """A list option's values, each once: the same seed, row, table or file given twice is one
    input (never two runs of it, nor two copies in one model); the repeats are said on stdout."""
    if not values:
        return values
    unique = list(dict.fromkeys(values))
    if len(unique) < len(values):
        repeated = [v for v in unique if values.count(v) > 1]
        typer.echo(f"{option}: {', '.join(map(str, repeated))} given more than once; taken once")
    return unique


def _params(params: Path, overrides: list[str] | None):
    from pipeline.params import load_params

    return load_params(params, overrides or [])


@app.command()
@error_boundary
def prepare(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None):
    """Prepare the dataset in data/prepared: uint8 arrays (shapes, CIFAR), or an index of the image
    files (ImageNet, image folders)."""
    from pipeline.stages.prepare import prepare as run

    p = _params(params, set_)
    data = run(p)
    typer.echo(f"prepared {data.name}: " + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()))


@app.command()
@error_boundary
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    fresh: Annotated[bool, typer.Option(help="discard an interrupted run's checkpoint and start over")] = False,
):
    """Train the configured method; resumes an interrupted run of the same configuration."""
    from pipeline.stages.train import train as run

    p = _params(params, set_)
    if (model := run(p, fresh=fresh)) is not None:  # None: one of several DDP processes, not rank 0
        typer.echo(f"saved {model}")


@app.command()
@error_boundary
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None):
    """Top-1/top-5 test error of every sub-network, their ensemble and the fused classifier."""
    from pipeline.stages.evaluate import evaluate as run

    result = run(_params(params, set_))
    json.dump(result, sys.stdout, indent=2)
    typer.echo()


@app.command()
@error_boundary
def tune(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    trials: Annotated[int | None, typer.Option(help="number of trials (tune.trials)")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join: auto, or host:port (default: RAY_ADDRESS or a local Ray)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted search, keeping its finished trials")] = False,
    fresh: Annotated[bool, typer.Option(help="discard an earlier search in <out>/ray and start over")] = False,
    out: Annotated[Path, typer.Option(help="the results folder (and, unless tune.storage says, Ray's)")] = Path("tune"),
    preset: Annotated[
        str | None,
        typer.Option(
            help="a table's row instead of --params (TABLE/ROW), or every row of a table (TABLE) into <out>/TABLE/<row>"
        ),
    ] = None,
    tables: TablesOpt = Path("configs/tables.yaml"),
):
    """Ray Tune + Optuna search over tune.space, scored on the validation split; results in tune/ (--out).

    --preset TABLE/ROW searches around a row of a table (its recipe, the table's search budget, the
    -S on top): the best trial's best_overrides.txt is then relative to that row, so
    `ffl reproduce TABLE --rows ROW $(cat <out>/best_overrides.txt)` trains it over seeds.
    --preset TABLE searches every row with the same budget, each into <out>/TABLE/<row>; the same
    command continues, leaving finished rows alone.

    Each trial trains tune.epochs epochs (null: train.epochs) and is scored by tune.metric
    (minimised). tune/best_params.yaml and tune/best_overrides.txt both hold what the best trial
    ran, the trial length included: `ffl train -p tune/best_params.yaml`, or
    `dvc exp run $(cat tune/best_overrides.txt)`; change train.epochs there for a longer run.
    tune/ holds plain files that git versions (no DVC stage deletes them);
    `dvc exp save --include-untracked tune` records a search as an experiment.
    """
    overrides = list(set_ or []) + ([f"tune.trials={trials}"] if trials is not None else [])
    if preset is not None:
        from pipeline.table_search import tune_preset

        summary = tune_preset(preset, tables, overrides, out, address, resume, fresh, echo=typer.echo)
    else:
        from pipeline.params import apply_overrides, read_yaml, validate

        base = read_yaml(params)
        raw = apply_overrides(base, overrides)
        p = validate(raw)
        from pipeline.tune import tune as run  # checks the search space before Ray starts

        summary = run(p, raw, address=address, resume=resume, fresh=fresh, base=base, out=out)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
@error_boundary
def export(
    classifier: Annotated[
        list[str] | None,
        typer.Option(
            help="sub0, sub1, ..., fused, ensemble (repeatable); default: every sub-network and the deployed one"
        ),
    ] = None,
    format_: Annotated[
        list[str] | None, typer.Option("--format", help="pt2 (torch.export) or onnx (repeatable); default: both")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder of the exported files")] = Path("models/export"),
    model: Annotated[Path, typer.Option(help="the trained model")] = Path("models/model.pt"),
):
    """Standalone files of the trained classifiers: plain PyTorch (torch.export.load) or ONNX runtimes
    run them without this project. Input: RGB floats in [0, 1], NCHW, of the size in model.json."""
    from pipeline.stages.deploy import export as run

    for path in run(once("--classifier", classifier), once("--format", format_), out, model):
        typer.echo(f"wrote {path}")


@app.command()
@error_boundary
def predict(
    inputs: Annotated[
        list[Path],
        # Not checked by Click: a missing or unreadable file is named and skipped like a damaged one.
        typer.Argument(help="image files, or folders of them (searched recursively)", readable=False),
    ],
    classifier: Annotated[
        str, typer.Option(help="auto (fused, else the ensemble, else the network), sub0, sub1, ...")
    ] = "auto",
    top: Annotated[int, typer.Option(min=1, help="classes shown per image")] = 3,
    model: Annotated[Path, typer.Option(help="the trained model")] = Path("models/model.pt"),
    json_: Annotated[bool, typer.Option("--json", help="one JSON object per image instead of a line")] = False,
):
    """Class probabilities for image files of any size (resized and centre-cropped as in evaluation).
    Files that cannot be read are named on stderr and skipped."""
    from pipeline.stages.deploy import predict as run

    results, failed = run(inputs, classifier, top, model)
    for path, why in failed:
        typer.echo(f"warning: {path}: cannot read it as an image ({why}); skipped", err=True)
    for r in results:
        if json_:
            typer.echo(json.dumps(r))
        else:
            typer.echo(f"{r['file']}  " + "  ".join(f"{c} {p:.1%}" for c, p in r["top"]))
    if not results:
        fail(f"none of the {len(failed)} files could be read")


@app.command()
@error_boundary
def reproduce(
    table: Annotated[str, typer.Argument(help="a table of configs/tables.yaml (cifar100-dualnet, cifar100-one, ...)")],
    seeds: Annotated[list[int], typer.Option(help="training seeds (repeatable)")] = [0, 1, 2],  # noqa: B006
    rows: Annotated[list[str] | None, typer.Option(help="only these rows (repeatable); default: all")] = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    tables: TablesOpt = Path("configs/tables.yaml"),
    address: Annotated[str | None, typer.Option(help="Ray cluster to run on: auto, or host:port")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the runs and estimate their GPU time; run nothing")] = False,
    tuned: Annotated[bool, typer.Option(help="each row at its search's best params (ffl tune --preset TABLE)")] = False,
):
    """A table of the paper over seeds: every (row, seed) a run on Ray, recorded as the DVC
    experiment <table>-<row>-s<seed>. Runs recorded already are skipped, so the same command
    continues an interrupted reproduction; a failed run is reported and the others go on.
    -S applies to every run (and `ffl report` needs the same -S to find them). Packing, CPUs per
    run and stacked seeds: the reproduce section of the params file (--params), -S included."""
    from pipeline.tables import load_tables, pick, plan

    presets, rows = load_tables(tables), once("--rows", rows)
    if tuned:  # the rows with their search's best_overrides.txt on top, recorded beside the defaults
        from pipeline.tuned_report import tuned_table

        presets[table] = tuned_table(pick(presets, table, rows)[0], table, rows or list(presets[table].rows))
    runs = plan(presets, table, rows, once("--seeds", seeds), set_ or [], variant="tuned" if tuned else "")
    if dry_run:
        from pipeline.estimate import dry_run as estimate

        estimate(runs, echo=typer.echo)
        return
    from pipeline.reproduce import reproduce as run

    summary = run(runs, _params(params, set_), address=address, echo=typer.echo)
    typer.echo(f"{len(summary['done'])} recorded, {len(summary['skipped'])} recorded before; `ffl report {table}`")


@app.command()
@error_boundary
def exps(
    all_commits: Annotated[bool, typer.Option("--all", help="every commit's experiments, not HEAD's only")] = False,
):
    """The DVC experiments in a view that fits 120 columns: method, networks, seed, the deployed
    classifier's test error and the sub-networks' mean (`dvc exp show` has every column)."""
    from pipeline.report import show_experiments

    show_experiments(all_commits, typer.echo)


@app.command()
@error_boundary
def report(
    table: Annotated[list[str], typer.Argument(help="tables of configs/tables.yaml")],
    set_: SetOpt = None,
    tables: TablesOpt = Path("configs/tables.yaml"),
    force: Annotated[
        bool, typer.Option(help="replace a report even when it was made from more runs than this one finds")
    ] = False,
    tuned: Annotated[bool, typer.Option(help="every row at its defaults beside its tuned runs: <table>-tuned")] = False,
    out: Annotated[Path, typer.Option(help="the reports' folder")] = Path("reports"),
):
    """The paper's table beside the runs that reproduce it (mean +- std over seeds, the difference):
    reports/<table>.md, .json and .png, from every DVC experiment whose params are a row's.
    A report is never replaced by one made from fewer runs (a clone without the experiments)
    unless --force says so."""
    from pipeline.report import report as run
    from pipeline.tables import load_tables, pick, plan

    presets = load_tables(tables)
    chosen = {name: pick(presets, name, None)[0] for name in once("tables", table)}  # all checked before writing
    for name in chosen:
        plan(presets, name, None, [0], set_ or [])  # every row's params valid (-S keys included)
    for name, preset in chosen.items():
        if tuned:
            from pipeline.tuned_report import tuned_report

            typer.echo(f"wrote {tuned_report(name, preset, out=out, force=force)}")
            continue
        path, entries = run(name, preset, set_ or [], out=out, force=force)
        missing = sorted({e["row"] for e in entries if e["mean"] is None})
        typer.echo(f"wrote {path}" + (f" (no runs yet: {', '.join(missing)})" if missing else ""))


@app.command()
@error_boundary
def methods(
    name: Annotated[str | None, typer.Argument(help="one method: its settings, sources and differences")] = None,
    write: Annotated[Path | None, typer.Option(help="write the whole Markdown page here (docs/methods.md)")] = None,
):
    """The methods: one line each, or one method in full (its settings with defaults, bounds and
    sources, and its known differences from its original); --write makes docs/methods.md."""
    from ffl import atomic
    from ffl.methods import METHODS
    from pipeline.methods_doc import render, summary_rows, terminal_view

    if write is not None:
        if name is not None:
            raise UserError("--write: the page holds every method; give no name with it")
        if write.exists() and not write.is_file():  # a device, a pipe, a folder: never replaced
            raise UserError(f"--write: {write} is not a regular file")
        try:
            atomic.write_text(write, render())
        except OSError as e:
            raise UserError(f"--write: cannot write {write} ({e.strerror})") from None
        typer.echo(f"wrote {write}")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=min(Console().width, 120))
    if name is None:
        table = Table("method", "class", "sub-networks", "layers", "deployed", "seeds stack", box=None)
        for row in summary_rows():
            table.add_row(*row)
        console.print(table)
        console.print("`ffl methods <name>`: one method in full; docs/methods.md: the page.")
        return
    if name not in METHODS:
        raise UserError(f"no method {name!r}; the methods are {', '.join(METHODS)}")
    terminal_view(name, METHODS[name], console)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
@error_boundary
def bench(ctx: typer.Context):
    """Training-step throughput against the authors' recipe (`ffl bench --help` for its options)."""
    from ffl.bench import main as run

    run(ctx.args)


def quiet_libraries() -> None:
    """What a command prints is ffl's: a Python warning (ffl's own or a library's) is one
    `warning:` line, without the file and source line Python quotes; torch's own log lines
    (compile notes such as "No CUDA runtime is found") only with TORCH_LOGS set."""
    import warnings

    def show_warning(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show_warning
    os.environ.setdefault("TORCH_LOGS", "-torch")  # torch's own switch: its loggers at ERROR (and the ranks')


def _terminated(signum, frame):
    typer.echo("error: interrupted", err=True)
    sys.exit(130)


def main():  # console script entry point
    quiet_libraries()
    # Typer vendors Click and exports only this subclass of its UsageError (unknown options and
    # commands, missing or malformed values).
    usage_error = typer.BadParameter.__base__
    # SIGTERM outside a command's own handling (as it ends, its outputs written) says so and exits
    # 130, instead of killing the process without a word; inside a command it is Ctrl-C (boundary).
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(standalone_mode=False)
    except usage_error as e:
        # One line, as for every other bad input (Click's own form is a usage block).
        where = e.ctx.command_path if e.ctx else "ffl"
        if not e.format_message() and e.ctx:  # `ffl` alone: the help
            typer.echo(e.ctx.get_help())
            sys.exit(2)
        message = e.format_message().replace("\n", "\\n")
        typer.echo(f"error: {where}: {message} (`{where} --help` lists the options)", err=True)
        sys.exit(2)
    except typer.Abort:  # an interrupt outside a command's own handling (while Click starts or ends)
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    finally:
        # The command has ended and said how: a SIGTERM while the interpreter shuts down (a second
        # or so with torch and Ray loaded, when Python has put the default handler back) would kill
        # the process with -15 instead of its exit code; nothing is left for it to stop.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
