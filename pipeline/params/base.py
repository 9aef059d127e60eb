"""The one base of every params model (params.yaml's sections, the search space, the tables'
presets): unknown keys refused, types strict (no "3" for 3), values frozen once validated, and
every float finite."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Upper bounds no real run comes near, so that a typo (or a search dimension up to 1e12) is refused
# at the door instead of running for ever or allocating the machine away.
MAX_EPOCHS = 100_000
MAX_BATCH = 1_000_000
MAX_TRIALS = 100_000


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
