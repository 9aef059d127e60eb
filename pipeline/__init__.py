"""Orchestration: params schema, stages, the `ffl` CLI and the Ray Tune driver. Uses `ffl`, never the reverse."""
