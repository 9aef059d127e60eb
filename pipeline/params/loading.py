"""Reading params: the YAML parser DVC itself uses (so the params that run are the params that
`dvc exp show` records), ``-S`` overrides with the syntax of ``dvc exp run -S``, keys that moved,
and validation into the typed ``Params``."""

from __future__ import annotations

import copy
import dataclasses
import stat
from pathlib import Path

from pydantic import ValidationError
from ruamel.yaml import YAML, YAMLError

from ffl.errors import one_line
from ffl.methods import METHODS
from pipeline.errors import ParamsError
from pipeline.params.base import refused
from pipeline.params.schema import MISSING, Params, check_consistency


def parse_yaml(text: str):
    """YAML 1.2 as DVC reads params.yaml (ruamel, safe): ``1e-4`` is a float, ``off`` a string,
    ``010`` is 10, and a duplicated key is an error."""
    return YAML(typ="safe").load(text)


def _problem(e: YAMLError) -> str:
    return str(getattr(e, "problem", None) or one_line(e))


# Keys that moved when each method got its own section: old dotted key -> new, where "{name}" is
# the selected method (the old shared keys were read by whichever method was selected).
MOVED = {
    "method.temperature": "method.{name}.temperature",
    "method.rampup_epochs": "method.{name}.rampup_epochs",
    "method.ce_weight": "method.{name}.ce_weight",
    "method.kd_weight": "method.{name}.kd_weight",
    "method.ekd": "method.ffl.ekd",
    "method.fkd": "method.ffl.fkd",
    "fusion": "method.ffl.fusion",
    "train.fusion_weight_decay": "method.ffl.fusion.weight_decay",
}
# Keys that are gone, with why.
REMOVED = {"tune.mode": "removed: tune.metric is a top-1 error (val/top1_err/...), always minimised"}


def _owner(method: str, new: str) -> str:
    """The method whose section an old shared key moved to: the selected one where it declares
    that setting, else FFL (whose settings the shared keys first were)."""
    setting = new.split(".")[2] if new.count(".") >= 2 else ""
    cls = METHODS.get(method)
    declared = {f.name for f in dataclasses.fields(cls.Settings)} if cls is not None else set()
    return method if setting in declared else "ffl"


def moved_to(key: str, method: str) -> str | None:
    """The new key of an old one (``fusion.width`` -> ``method.ffl.fusion.width``), or None."""
    for old, new in MOVED.items():
        if key == old or key.startswith(old + "."):
            return new.format(name=_owner(method, new)) + key[len(old) :]
    return None


def _check_moved(raw: dict) -> None:
    method = raw.get("method", {}).get("name", "ffl") if isinstance(raw.get("method"), dict) else "ffl"
    for old in (*MOVED, *REMOVED):
        node = raw
        parts = old.split(".")
        for part in parts:
            node = node.get(part) if isinstance(node, dict) and part in node else KeyError
            if node is KeyError:
                break
        else:
            if old in REMOVED:
                raise ParamsError(old, REMOVED[old])
            raise ParamsError(old, f"moved to {moved_to(old, method)} (each method has its own section)")


def set_dotted(raw: dict, key: str, value) -> dict:
    """Sets ``a.b.c`` in nested dicts, creating missing sections (the schema refuses unknown ones)."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ParamsError(".".join(parts[: i + 1]), "is a value, not a section")
    node[parts[-1]] = value
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``raw`` with ``section.key=value`` assignments (values parsed as YAML: the syntax of ``dvc exp
    run -S``) applied to a copy: the caller's params stay as they were read."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamsError(item, "an override is key=value with a dotted key (train.lr=0.05)")
        if any(not part.strip() for part in key.split(".")):
            raise ParamsError(key, "a dotted key has a word between every two dots (train.lr=0.05)")
        try:
            parsed = parse_yaml(value) if value.strip() else None
        except YAMLError as e:
            raise ParamsError(key, f"value {value!r} is not valid YAML ({_problem(e)})") from None
        except RecursionError:  # the YAML parser recurses once per level of nesting
            parsed = TOO_DEEP
        if parsed is TOO_DEEP or nesting(parsed) > MAX_DEPTH:
            raise ParamsError(key, f"the value is nested deeper than {MAX_DEPTH} levels; params are a few levels deep")
        set_dotted(raw, key, parsed)
    return raw


TOO_DEEP = object()
MAX_DEPTH = 32  # levels of nesting in one -S value; the deepest param (tune.space) has 5


def nesting(node) -> int:
    """How deep ``node`` nests lists and mappings, walked without recursion (a value of thousands
    of levels must not end in RecursionError)."""
    deepest, stack = 0, [(node, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth + 1)
            if depth + 1 <= MAX_DEPTH:
                stack.extend((c, depth + 1) for c in (node.values() if isinstance(node, dict) else node))
    return deepest


MAX_BYTES = 1 << 20  # a params file is a few KB; anything near this is not one
MAX_VALUES = 100_000  # keys and values once YAML aliases are expanded (a "billion laughs" file has 10^9)


def expanded_size(node, memo: dict | None = None) -> int:
    """How many keys and values ``node`` holds with every alias expanded, counted in time linear in
    the file (aliases are shared objects: each is sized once); a cycle counts as too many."""
    memo = {} if memo is None else memo
    if not isinstance(node, (dict, list)):
        return 1
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_VALUES + 1  # seen again before it is sized: a cycle
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
    memo[id(node)] = size = 1 + sum(expanded_size(c, memo) for c in children)
    return size


BASE = "base"  # an overlay's params file, relative to the overlay's own folder
MAX_BASES = 8


def read_yaml(path: str | Path, _within: tuple[Path, ...] = ()) -> dict:
    """A params file as a dict. A file with a top-level ``base`` is an overlay: the base file (a
    path relative to the overlay's folder, itself possibly an overlay), with the overlay's keys
    laid over it section by section (configs/*.yaml are the paper's recipes over params.yaml)."""
    path = Path(path)
    raw = _read_file(path)
    base = raw.pop(BASE, None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ParamsError(BASE, f"{path}: base is the path of the params file this one changes, got {base!r}")
    target = path.parent / base
    if target.resolve() in (*_within, path.resolve()) or len(_within) >= MAX_BASES:
        raise ParamsError(BASE, f"{path}: its bases lead back to themselves or go deeper than {MAX_BASES}")
    return overlay(read_yaml(target, (*_within, path.resolve())), raw)


def overlay(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` laid over it: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in changes.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = overlay(out[key], value) if both else value
    return out


def _read_file(path: Path) -> dict:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            raise ParamsError("", f"{path}: not a regular file")
        if info.st_size > MAX_BYTES:
            raise ParamsError("", f"{path}: {info.st_size} bytes; a params file is at most {MAX_BYTES}")
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError("", f"{path}: params file not found") from None
    except UnicodeDecodeError:
        raise ParamsError("", f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise ParamsError("", f"{path}: cannot read params file ({e.strerror})") from None
    try:
        raw = parse_yaml(text)
        too_big = expanded_size(raw) > MAX_VALUES
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError("", f"{path}: malformed YAML{where}: {_problem(e)}") from None
    except RecursionError:
        raise ParamsError("", f"{path}: nested too deeply") from None
    if too_big:
        raise ParamsError("", f"{path}: expands to more than {MAX_VALUES} values (YAML aliases?)")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError("", f"{path}: params must be a mapping of sections, got {type(raw).__name__}")
    return raw


def validate(raw: dict) -> Params:
    _check_moved(raw)
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise refused(e, Params, missing=MISSING) from None
    check_consistency(params)
    return params


def load_params(path: str | Path = "params.yaml", overrides: list[str] = ()) -> Params:
    params = validate(apply_overrides(read_yaml(path), list(overrides)))
    params._origin = (str(path), tuple(overrides))
    return params
