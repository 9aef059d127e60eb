"""The one base of every params model (params.yaml's sections, the search space, the tables'
presets): unknown keys refused, types strict (no "3" for 3), values frozen once validated, and
every float finite."""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import ParamsError

# Upper bounds no real run comes near, so that a typo (or a search dimension up to 1e12) is refused
# at the door instead of running for ever or allocating the machine away.
MAX_EPOCHS = 100_000
MAX_BATCH = 1_000_000
MAX_TRIALS = 100_000


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


REQUIRED = "required key is missing"


def refused(
    e: ValidationError, model: type[BaseModel], within: tuple = (), file: object = None, missing: str = REQUIRED
) -> ParamsError:
    """A model's refusal as the user's one line: the first error's dotted key (after ``within``,
    the keys above the model; after ``file:``, where one file holds it) and its reason; an unknown
    key with the closest key the model has, a missing one with ``missing``, and how many other
    errors there are."""
    err = e.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + did_you_mean(model, err["loc"], within)
    elif err["type"] == "missing":
        msg = missing
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    key = ".".join(str(p) for p in (*within, *err["loc"]))
    return ParamsError(f"{file}: {key}" if file is not None else key, msg + more)


def did_you_mean(model: type[BaseModel], loc: tuple, within: tuple = ()) -> str:
    """``; did you mean a.b.c?`` for an unknown key close to one its section of ``model`` has, else ``""``."""
    section: type | None = model
    keyed = False  # the part is a key of a mapping of sections (a table's rows), not a field
    for part in loc[:-1]:
        if keyed:
            keyed = False
            continue
        field = getattr(section, "model_fields", {}).get(str(part))
        if field is None:
            return ""
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            annotation, keyed = typing.get_args(annotation)[1], True
        candidates = [annotation, *typing.get_args(annotation)]
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if section is None:
            return ""
    match = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {'.'.join([*map(str, (*within, *loc[:-1])), match[0]])}?" if match else ""
