"""What a search minimises, and the search checked against the params schema before Ray starts:
above the schema and the loading rules, which it uses (the params package imports one way:
base <- search <- schema <- loading <- tuning)."""

from __future__ import annotations

import copy

from pipeline.errors import ParamsError
from pipeline.params.loading import moved_to, set_dotted, validate
from pipeline.params.schema import method_outputs


def tune_metric(p) -> str:
    """What a search minimises: ``tune.metric``, where ``auto`` is the validation error of the
    classifier the running method deploys (FFL's fused, DML's ensemble, ...)."""
    if p.tune.metric != "auto":
        return p.tune.metric
    return f"val/top1_err/{p.method_class.deployed(len(p.archs()), p.settings())}"


def check_tune(p, raw: dict) -> None:
    """The search, checked before Ray starts: the metric exists, every dimension is a param whose
    edge values the schema accepts."""
    t = p.tune
    metrics = [f"val/top1_err/{o}" for o in method_outputs(p)]
    if tune_metric(p) not in metrics:
        raise ParamsError("tune.metric", f"{p.method.name} reports {', '.join(metrics)} (or auto); got {t.metric!r}")
    if p.data.split_fraction() == 0:
        raise ParamsError(
            "data.val_fraction", "tuning scores trials on the validation split: it must be > 0 (protocol clean)"
        )
    if not t.dimensions(p.method.name):
        where = f"tune.space.method.{p.method.name}"
        raise ParamsError("tune.space", f"the search space is empty for {p.method.name} (its section: {where})")
    for key, dim in t.dimensions(p.method.name).items():
        if key.split(".")[0] in ("tune", "evaluate"):
            raise ParamsError(f"tune.space.{key}", "only training params can be searched")
        if key == "train.processes":
            raise ParamsError(f"tune.space.{key}", "a trial is one process (tune.resources): it cannot be searched")
        new = moved_to(key, p.method.name)
        if new:
            raise ParamsError(f"tune.space.{key}", f"moved to tune.space.{new}")
        for value in dim.points():
            try:
                validate(set_dotted(copy.deepcopy(raw), key, value))
            except ParamsError as e:
                reason = "not a param" if e.reason.startswith("unknown key") else f"{value!r} is refused ({e})"
                raise ParamsError(f"tune.space.{key}", reason) from None
