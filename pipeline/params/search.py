"""The search space of `ffl tune` (``tune`` section): its schema, parsed once into dimensions
(pipeline/params/tuning.py checks it against the params schema before Ray starts)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from ffl.methods import METHODS
from pipeline.errors import ParamsError
from pipeline.params.base import MAX_EPOCHS, MAX_TRIALS, Section, refused


class Dimension(Section):
    """One dimension of the search space: its kind and bounds (or choices)."""

    type: Literal["uniform", "loguniform", "int", "logint", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty list of values")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} dimension needs low and high")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type.startswith("log") and self.low <= 0:
            raise ValueError(f"a {self.type} dimension needs low > 0")
        if self.type in ("int", "logint") and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int dimension needs whole-number bounds")
        return self

    def points(self) -> list:
        """The values a trial can take at the edges: checked against the params schema up front."""
        if self.type == "choice":
            return list(self.values)
        if self.type in ("int", "logint"):
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class SchedulerParams(Section):
    name: Literal["asha", "median", "fifo"]
    grace_period: int = Field(ge=1, le=MAX_EPOCHS)  # epochs every trial runs before it can be stopped
    reduction_factor: float = Field(gt=1)


class ResourcesParams(Section):
    cpu: float = Field(gt=0)
    gpu: float = Field(ge=0)  # a fraction shares one GPU between trials: 0.25 = four at once


def _parse_space(space: dict) -> dict[str, Dimension]:
    out: dict[str, Dimension] = {}

    def walk(node, path):
        if isinstance(node, dict) and "type" in node:
            try:
                out[".".join(path)] = Dimension.model_validate(node)
            except ValidationError as e:
                raise refused(e, Dimension, within=("tune", "space", *path)) from None
        elif isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, [*path, str(k)])
        else:
            where = ".".join(["tune", "space", *path])
            raise ParamsError(where, "expected a section or a dimension {type: ..., low: ..., high: ...}")

    if space:
        walk(space, [])
    return out


class TuneParams(Section):
    trials: int = Field(ge=1, le=MAX_TRIALS)
    metric: str  # on the validation split, never the test split; minimised; auto: tune_metric
    sampler: Literal["tpe", "random"]
    seed: int = Field(ge=0, lt=2**32)
    epochs: int | None = Field(ge=1, le=MAX_EPOCHS)  # a trial's length; null = train.epochs
    max_concurrent: int = Field(ge=0)  # 0 = as many as the resources allow
    max_failures: int = Field(ge=0)  # retries of a trial that crashed
    # A search's budget in time: no trial starts after it, running ones stop, finished ones count.
    time_budget_min: float | None = Field(gt=0)
    scheduler: SchedulerParams
    resources: ResourcesParams
    # Nested like the params it searches (method: {ffl: {temperature: {type: loguniform, ...}}}), so
    # that `-S tune.space.method.ffl.temperature.high=10` works; a mapping with a `type` is a dimension.
    # Where Ray keeps the search: null = <results folder>/ray here (tune/ray); on a cluster, a path
    # every node reaches or a URI (s3://bucket/ffl-tune). The results for people land in the results
    # folder (`ffl tune --out`, tune/) either way.
    storage: str | None
    space: dict[str, Any]
    _dims: dict[str, Dimension] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _dimensions(self):
        # Parsed once, here: every later use reads the same validated dimensions.
        self._dims = _parse_space(self.space)
        return self

    def dimensions(self, method: str) -> dict[str, Dimension]:
        """The space that a search of ``method`` searches, flattened to ``{dotted param: Dimension}``:
        ``space.method`` holds a section per method (params.yaml has FFL's and DML's), and only the
        running method's own section counts, beside the rest (train.lr, ...)."""

        return {
            k: d
            for k, d in self._dims.items()
            if not (k.startswith("method.") and k.split(".")[1] in set(METHODS) - {method})
        }
