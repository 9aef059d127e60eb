"""The tables' presets (configs/tables.yaml): their schema, the params of each row, the runs a
table makes over seeds, and the metrics each row is reported on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, ValidationError, model_validator

from pipeline.errors import ParamsError, UserError
from pipeline.params import Params, apply_overrides, method_outputs, read_yaml, validate
from pipeline.params.base import Section, refused

TABLES = Path("configs/tables.yaml")


# Table and row names make experiment names (git refs) and report file names: plain words only.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


def _tune_only(changes: list[str]) -> list[str]:
    outside = [c for c in changes if not c.partition("=")[0].strip().startswith("tune.")]
    if outside:
        raise ValueError(f"a search budget sets tune.* keys only (the rows set the rest), got {outside[0]!r}")
    return changes


def _no_seed(changes: list[str]) -> list[str]:
    if any(c.partition("=")[0].strip() == "seed" for c in changes):
        raise ValueError("seed is set by `ffl reproduce --seeds`, not by a table or a row")
    return changes


class Row(Section):
    set: Annotated[list[str], AfterValidator(_no_seed)] = Field(default_factory=list)
    # metric of metrics/test.json (top1_err.fused) -> the paper's number; empty in a table of our own
    paper: dict[str, float] = Field(default_factory=dict)


class Table(Section):
    title: str
    base: str
    set: Annotated[list[str], AfterValidator(_no_seed)] = Field(default_factory=list)
    rows: dict[Annotated[str, StringConstraints(pattern=NAME)], Row] = Field(min_length=1)
    # Rows without the paper's numbers report these metrics (``deployed``: the classifier the row's
    # method deploys) and are compared with the ``compare`` row's deployed classifier.
    metrics: list[str] = Field(default_factory=lambda: ["top1_err.deployed", "top1_err.sub_mean"])
    compare: str | None = None
    # The one budget every row's search gets (`ffl tune --preset TABLE`): -S pairs of tune.*.
    search: Annotated[list[str], AfterValidator(_tune_only)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _comparable(self):
        for key in self.metrics:
            if key.partition(".")[0] not in ("top1_err", "top5_err") or not key.partition(".")[2]:
                raise ValueError(f"metrics: {key!r} is not top1_err.<classifier> or top5_err.<classifier>")
        if self.compare is not None and self.compare not in self.rows:
            raise ValueError(f"compare: {self.compare!r} is not one of its rows ({', '.join(self.rows)})")
        if self.compare is None and any(not row.paper for row in self.rows.values()):
            raise ValueError("rows without paper numbers are compared with a row of the table: name it in compare")
        return self


class Tables(dict[str, Table]):
    """The tables of one file, which the messages name."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)


def load_tables(path: Path = TABLES) -> Tables:
    raw = read_yaml(path)
    if not raw:
        raise ParamsError(str(path), "holds no tables (an empty file?); configs/tables.yaml shows the form")
    tables = Tables(path)
    for name, table in raw.items():
        if not re.match(NAME, str(name)):
            raise ParamsError(f"{path}: {name}", "a table's name is a plain word (letters, digits, - and _)")
        try:
            tables[str(name)] = Table.model_validate(table)
        except ValidationError as e:
            raise refused(e, Table, within=(name,), file=path) from None
    return tables


def pick(tables: dict[str, Table], name: str, rows: list[str] | None) -> tuple[Table, list[str]]:
    if name not in tables:
        where = f" in {tables.path}" if isinstance(tables, Tables) else ""
        raise UserError(f"no table {name!r}{where}; its tables are {', '.join(tables)}")
    table = tables[name]
    unknown = [r for r in rows or () if r not in table.rows]
    if unknown:
        raise UserError(f"--rows: {name} has no row {unknown[0]!r}; its rows are {', '.join(table.rows)}")
    return table, list(rows or table.rows)


def row_raw(table: Table, row: str, overrides: list[str] = ()) -> dict:
    """The whole params file of a row: the table's base, its set, the row's set, then ``overrides``."""
    return apply_overrides(read_yaml(table.base), [*table.set, *table.rows[row].set, *overrides])


@dataclass(frozen=True)
class Run:
    table: str
    row: str
    seed: int
    raw: dict
    params: Params
    variant: str = ""  # set when the plain name is taken by a run of other params (sort_out)

    @property
    def name(self) -> str:  # the DVC experiment: <table>-<row>[-<variant>]-s<seed>
        return "-".join([self.table, self.row, *([self.variant] if self.variant else []), f"s{self.seed}"])


def plan(
    tables, name: str, rows: list[str] | None, seeds: list[int], overrides: list[str] = (), variant: str = ""
) -> list[Run]:
    """Every (row, seed) run of a table, its params validated (a bad row stops before any run);
    ``variant`` names the runs of a variant of the table (``tuned``: <table>-<row>-tuned-s<seed>)."""
    table, rows = pick(tables, name, rows)
    runs = []
    for row in rows:
        for seed in seeds:
            raw = apply_overrides(row_raw(table, row, overrides), [f"seed={seed}"])
            try:
                params = validate(raw)
            except UserError as e:
                raise UserError(f"{name}.{row}: {e}") from None
            if seed == seeds[0]:
                check_paper_metrics(f"{name}.{row}", table.rows[row].paper, params)
            runs.append(Run(name, row, seed, raw, params, variant))
    return runs


def resolve_metric(key: str, params: Params) -> str:
    """``top1_err.deployed`` as the classifier the row's method deploys (``top1_err.fused`` for FFL);
    other keys as they are."""
    kind, _, clf = key.partition(".")
    if clf == "deployed":
        return f"{kind}.{params.method_class.deployed(len(params.archs()), params.settings())}"
    return key


def row_metrics(table: Table, row: str, params: Params) -> list[str]:
    """What a row reports: the paper's metrics, or the table's ``metrics`` that its method has."""
    if table.rows[row].paper:
        return list(table.rows[row].paper)
    available = reported_classifiers(params)
    return [m for m in (resolve_metric(k, params) for k in table.metrics) if m.partition(".")[2] in available]


def reported_classifiers(params: Params) -> list[str]:

    return method_outputs(params) + (["sub_mean"] if len(params.archs()) > 1 else [])


def check_paper_metrics(where: str, paper: dict[str, float], params: Params) -> None:
    """Every number of the paper names a metric the row's runs report (or the report could never
    fill it in)."""
    classifiers = reported_classifiers(params)
    for key in paper:
        kind, _, clf = key.partition(".")
        if kind not in ("top1_err", "top5_err") or clf not in classifiers:
            raise UserError(
                f"{where}.paper.{key}: not a metric its runs report (top1_err or top5_err of {', '.join(classifiers)})"
            )
