"""The one base of every params model (params.yaml's sections, the search space, the tables'
presets): unknown keys refused, types strict (no "3" for 3), values frozen once validated, and
every float finite."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
