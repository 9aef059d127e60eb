"""`ffl tune --preset TABLE[/ROW]`: searches around a table's rows, each with the table's one budget.

A table states its search budget once (``search`` in configs/tables.yaml: trials, scheduler,
sampler seed, time bound, as -S pairs of the tune section), so that every row of a comparison is
searched alike. ``--preset TABLE/ROW`` searches one row; ``--preset TABLE`` every row, each into its
own folder (``<out>/<table>/<row>``), one after the other. The same command continues: a row whose
search finished with these params is left alone, an interrupted one resumes, a new one starts;
a row searched with other params is refused (``--fresh`` searches again). Each row's summary.json
records its budget, its wall time over every sitting and what ended it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import Interrupted, UserError
from pipeline.params import Params, apply_overrides, validate
from pipeline.tables import Table, load_tables, pick, row_raw
from pipeline.tune_results import search_identity


def row_search(table: Table, row: str, overrides: list[str]) -> tuple[dict, dict, Params]:
    """(base, raw, params) of a row's search: the row's params file (what best_overrides.txt is
    relative to), then the table's budget and the user's -S on top."""
    base = row_raw(table, row)
    raw = apply_overrides(base, [*table.search, *overrides])
    try:
        return base, raw, validate(raw)
    except UserError as e:
        raise UserError(f"{row}: {e}") from None


def state(folder: Path, params: Params) -> str:
    """``done`` (its results are of these params), ``unfinished`` (a search of these params is there
    and has no results yet), ``other`` (a search of other params) or ``new``."""
    from pipeline.tune import SearchStorage, check_same_search

    summary = folder / "summary.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("search") == search_identity(params):
                return "done"
        except (OSError, ValueError):
            pass  # damaged: the search there decides
    storage = SearchStorage(params.tune.storage, folder)
    if not storage.has_search():
        return "new"
    started = storage.started_with()
    if started is None:
        return "other"
    try:
        check_same_search(str(storage), started, params.model_dump(mode="json"))
    except UserError:
        return "other"
    return "unfinished"


def tune_preset(
    preset: str, tables: Path, overrides: list[str], out: Path, address: str | None, resume: bool, fresh: bool, echo
) -> dict:
    """The search of ``--preset TABLE/ROW`` into ``out``, or of every row of ``--preset TABLE`` into
    ``out/TABLE/<row>``. Returns the summary (one row) or {row: summary}."""
    from pipeline.tune import tune

    name, _, row = preset.partition("/")
    table, rows = pick(load_tables(tables), name, None)
    if row:
        if row not in rows:
            raise UserError(f"--preset: {name} has no row {row!r}; its rows are {', '.join(rows)}")
        base, raw, params = row_search(table, row, overrides)
        return tune(params, raw, address=address, resume=resume, fresh=fresh, base=base, out=out)
    if resume:
        raise UserError(f"--preset {name}: every row resumes on its own where it stopped; drop --resume")
    searches = {r: row_search(table, r, overrides) for r in rows}  # every row valid before any search
    folders = {r: out / name / r for r in rows}
    states = {r: "new" if fresh else state(folders[r], searches[r][2]) for r in rows}
    if other := [r for r in rows if states[r] == "other"]:
        raise UserError(
            f"--preset {name}: {', '.join(other)} searched with other params in {out / name}; the same -S "
            "continues them, --fresh searches every row again"
        )
    summaries = {}
    for r in rows:
        base, raw, params = searches[r]
        if states[r] == "done":
            summaries[r] = json.loads((folders[r] / "summary.json").read_text())
            echo(f"[tune] {name}/{r}: searched already ({ended(summaries[r])}); {folders[r]}")
            continue
        echo(f"[tune] {name}/{r}: {'resuming its search' if states[r] == 'unfinished' else 'searching'}")
        try:
            summaries[r] = tune(
                params, raw, address=address, resume=states[r] == "unfinished", fresh=fresh or states[r] == "new",
                base=base, out=folders[r],
            )  # fmt: skip
        except Interrupted:
            raise Interrupted(
                f"{folders[r]}: search interrupted, finished trials kept; `ffl tune --preset {name}` continues it "
                "(and the rows after it)"
            ) from None
        echo(f"[tune] {name}/{r}: {ended(summaries[r])}; {folders[r]}")
    return summaries


def ended(summary: dict) -> str:
    """How a row's search ended, in a few words."""
    minutes = summary.get("wall_s", 0) / 60
    return f"{summary.get('ended', 'finished')}, {minutes:.1f} min"
