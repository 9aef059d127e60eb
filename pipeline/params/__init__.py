"""params.yaml, validated once at the door: the schema (schema.py), reading and ``-S`` overrides
(loading.py), the search space (search.py) and its checks (tuning.py),
one base for all (base.py). Inside, code takes the typed ``Params``."""

from pipeline.params.loading import apply_overrides, load_params, parse_yaml, read_yaml, set_dotted, validate
from pipeline.params.schema import FILE_SOURCES, Params, method_outputs, method_spec
from pipeline.params.search import Dimension
from pipeline.params.tuning import check_tune, tune_metric

__all__ = [
    "FILE_SOURCES",
    "Dimension",
    "Params",
    "apply_overrides",
    "check_tune",
    "load_params",
    "method_outputs",
    "method_spec",
    "parse_yaml",
    "read_yaml",
    "set_dotted",
    "tune_metric",
    "validate",
]
