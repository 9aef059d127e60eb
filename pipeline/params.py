"""The params schema: params.yaml is validated here, once, before any work starts.

Unknown keys, wrong types and out-of-range values are refused with the dotted key in the message;
so are combinations no method can train (too few sub-networks, unfusable feature maps, EKD
without a fusion module). Inside, code takes these typed objects.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ffl.engine import COMPILE_MODES_WITH_GRAPHS
from ffl.methods import METHODS
from ffl.models import backbone_spec, check_fusable
from pipeline.errors import ParamsError

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ShapesParams(Section):
    train_per_class: int = Field(400, ge=1)
    test_per_class: int = Field(200, ge=1)
    noise: float = Field(0.1, ge=0, le=1)


class AugmentParams(Section):
    pad: int = Field(4, ge=0)
    pad_mode: Literal["reflect", "zeros", "replicate"] = "reflect"
    flip: bool = True


class FilesParams(Section):
    """Datasets read from image files (imagenet, imagefolder): decoding and the standard ImageNet crops."""

    image_size: int = Field(224, ge=8)
    resize: int = Field(256, ge=8)
    workers: int = Field(8, ge=0)

    @field_validator("resize")
    @classmethod
    def _covers_crop(cls, resize, info):
        size = info.data.get("image_size")
        if size is not None and resize < size:
            raise ValueError(f"must be at least image_size ({size}): evaluation centre-crops the resized image")
        return resize


FILE_SOURCES = ("imagenet", "imagefolder")


class DataParams(Section):
    source: Literal["shapes", "cifar10", "cifar100", "imagenet", "imagefolder"] = "shapes"
    seed: int = Field(0, ge=0)  # the dataset's own seed (generation, validation split), not training's
    root: str = "data/raw"
    download: bool = False
    val_fraction: float = Field(0.1, ge=0, lt=1)
    shapes: ShapesParams = ShapesParams()
    augment: AugmentParams = AugmentParams()
    files: FilesParams = FilesParams()


def _known_arch(name: str) -> str:
    backbone_spec(name)  # ValueError names the known architectures
    return name


Arch = Annotated[str, AfterValidator(_known_arch)]


def _auto_or_bool(v):
    # One clear message instead of one per member of the union.
    if v != "auto" and not isinstance(v, bool):
        raise ValueError(f"expected auto, true or false, got {v!r}")
    return v


AutoBool = Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)]


class ModelParams(Section):
    archs: list[Arch] = Field(default_factory=lambda: ["resnet32", "resnet32"], min_length=1)
    # auto: the method's own setting (FFL: shared when the archs are equal; ONE: shared; others: not).
    shared: AutoBool = "auto"


class FusionParams(Section):
    enabled: bool = True
    width: int | None = Field(None, ge=1)  # null: channels of the first sub-network's feature map
    kernel_size: int = Field(3, ge=1)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k):
        if k % 2 == 0:
            raise ValueError("must be odd, so that the fused map keeps its size")
        return k


class KDTerm(Section):
    enabled: bool = True
    weight: NonNegFloat = 1.0


class DualNetParams(Section):
    finetune_fraction: float = Field(0.1, ge=0, lt=1)


class MethodParams(Section):
    name: Literal["ffl", "dml", "one", "dualnet", "vanilla"] = "ffl"
    temperature: PositiveFloat = 3.0
    rampup_epochs: NonNegFloat = 80.0
    ce_weight: NonNegFloat = 1.0
    kd_weight: NonNegFloat = 1.0  # DML's and ONE's KD term
    ekd: KDTerm = KDTerm()
    fkd: KDTerm = KDTerm()
    dualnet: DualNetParams = DualNetParams()


class TrainParams(Section):
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: PositiveFloat = 0.1
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: NonNegFloat = 1e-4
    fusion_weight_decay: NonNegFloat = 1e-5
    milestones: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [0.5, 0.75])
    gamma: float = Field(0.1, gt=0, le=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    # Whole training step (forward, backward, optimiser, metric sums) captured as one CUDA graph.
    # auto: on for GPU runs of every method but DualNet (Python-side alternation) in fp32/bf16.
    cuda_graph: AutoBool = "auto"
    # torch.compile mode. auto: off where the whole-step graph runs (compile "default" adds fused
    # kernels inside it: ~25% faster steps for ~70 s of compiling, worth it on full runs),
    # reduce-overhead (graphs over forward and backward) on other GPU runs, off on CPUs, where
    # compiling buys nothing measurable (docs/benchmarks.md).
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "auto"
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, d):
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", d):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return d

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, m):
        if list(m) != sorted(m):
            raise ValueError("must be increasing fractions of the epochs")
        return m

    def milestone_epochs(self) -> list[int]:
        return [round(f * self.epochs) for f in self.milestones]


class EvaluateParams(Section):
    batch_size: int = Field(1000, ge=1)


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
    name: Literal["asha", "median", "fifo"] = "asha"
    grace_period: int = Field(2, ge=1)  # epochs every trial runs before it can be stopped
    reduction_factor: float = Field(3.0, gt=1)


class ResourcesParams(Section):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)  # a fraction shares one GPU between trials: 0.25 = four at once


class TuneParams(Section):
    trials: int = Field(50, ge=1)
    metric: str = "val/acc/fused"  # on the validation split, never the test split
    mode: Literal["max", "min"] = "max"
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, ge=0)
    epochs: int | None = Field(None, ge=1)  # a trial's length; null = train.epochs
    max_concurrent: int = Field(0, ge=0)  # 0 = as many as the resources allow
    max_failures: int = Field(1, ge=0)  # retries of a trial that crashed
    scheduler: SchedulerParams = SchedulerParams()
    resources: ResourcesParams = ResourcesParams()
    # Nested like the params it searches (method: {temperature: {type: loguniform, ...}}), so that
    # `-S tune.space.method.temperature.high=10` works; a mapping with a `type` is a dimension.
    space: dict[str, Any] = Field(default_factory=dict)

    def dimensions(self) -> dict[str, Dimension]:
        """The space flattened to ``{dotted param: Dimension}``, each dimension validated."""
        out: dict[str, Dimension] = {}

        def walk(node, path):
            if isinstance(node, dict) and "type" in node:
                try:
                    out[".".join(path)] = Dimension.model_validate(node)
                except ValidationError as e:
                    err = e.errors()[0]
                    key = ".".join(["tune", "space", *path, *(str(p) for p in err["loc"])])
                    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                    raise ParamsError(key, msg.removeprefix("Value error, ")) from None
            elif isinstance(node, dict) and node:
                for k, v in node.items():
                    walk(v, [*path, str(k)])
            else:
                where = ".".join(["tune", "space", *path])
                raise ParamsError(where, "expected a section or a dimension {type: ..., low: ..., high: ...}")

        walk(self.space, [])
        return out


class Params(Section):
    seed: int = Field(0, ge=0)
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    method: MethodParams = MethodParams()
    fusion: FusionParams = FusionParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    tune: TuneParams = TuneParams()

    def shared(self) -> bool:
        if self.model.shared != "auto":
            return self.model.shared
        if self.method.name == "one":
            return True
        return self.method.name == "ffl" and len(set(self.model.archs)) == 1


# -- loading ---------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: ``1e-4`` is a number (as DVC, which writes params.yaml, reads it), not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``section.key=value`` assignments, values parsed as YAML: the syntax of ``dvc exp run -S``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamsError(item, "an override is key=value with a dotted key (train.lr=0.05)")
        try:
            parsed = parse_yaml(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ParamsError(key, f"value {value!r} is not valid YAML ({e.problem})") from None
        set_dotted(raw, key, parsed)
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError("", f"{path}: params file not found") from None
    except OSError as e:
        raise ParamsError("", f"{path}: cannot read params file ({e.strerror})") from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError("", f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError("", f"{path}: params must be a mapping of sections, got {type(raw).__name__}")
    return raw


def validate(raw: dict) -> Params:
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ParamsError(_dotted(err["loc"]), msg + more) from None
    check_consistency(params)
    return params


def load_params(path: str | Path = "params.yaml", overrides: list[str] = ()) -> Params:
    return validate(apply_overrides(read_yaml(path), list(overrides)))


def check_consistency(p: Params) -> None:
    """What no single key can say wrong on its own."""
    name, archs, n = p.method.name, p.model.archs, len(p.model.archs)
    if p.data.download and p.data.source in FILE_SOURCES:
        raise ParamsError("data.download", f"{p.data.source} cannot be downloaded: place it under data.root")
    if name in ("ffl", "dml", "one") and n < 2:
        raise ParamsError("model.archs", f"{name} needs at least 2 sub-networks, got {n}")
    if name == "dualnet" and n != 2:
        raise ParamsError("model.archs", f"dualnet fuses exactly 2 sub-networks, got {n}")
    if p.model.shared is True:
        if name in ("dml", "vanilla", "dualnet"):
            raise ParamsError("model.shared", f"{name} trains independent networks; set it to auto or false")
        if len(set(archs)) > 1:
            raise ParamsError("model.shared", f"branches sharing low-level layers need one architecture, got {archs}")
    if p.model.shared is False and name == "one":
        raise ParamsError("model.shared", "ONE's gate reads the shared low-level features; set it to auto or true")
    if (name == "ffl" and p.fusion.enabled) or name == "dualnet":
        try:
            check_fusable(archs)
        except ValueError as e:
            raise ParamsError("model.archs", str(e)) from None
    if name == "dualnet":
        channels = {backbone_spec(a).out_channels for a in archs}
        if len(channels) > 1:
            raise ParamsError("model.archs", "dualnet sums feature maps: their channel counts must match")
    if name == "ffl" and p.method.ekd.enabled and not p.fusion.enabled:
        raise ParamsError("method.ekd.enabled", "EKD distils into the fusion module: it needs fusion.enabled")
    static_step = METHODS[name].static_step
    if not static_step and p.train.compile not in ("off", "auto"):
        raise ParamsError("train.compile", f"{name} decides each step in Python: it trains eagerly (off)")
    if p.train.cuda_graph is True:
        if not static_step:
            raise ParamsError("train.cuda_graph", f"{name} decides each step in Python: set it to auto or false")
        if p.train.precision == "fp16":
            raise ParamsError(
                "train.cuda_graph", "fp16's loss scaler syncs with the host every step: use precision bf16 or fp32"
            )
        if p.train.compile in COMPILE_MODES_WITH_GRAPHS:
            raise ParamsError(
                "train.compile", f"{p.train.compile} brings its own CUDA graphs: use default or off with cuda_graph"
            )
    if p.train.nesterov and p.train.momentum == 0:
        raise ParamsError("train.nesterov", "Nesterov momentum needs train.momentum > 0")


def method_outputs(p: Params) -> list[str]:
    """The classifiers the configured method reports (their validation accuracy can be tuned for)."""
    n = len(p.model.archs)
    outputs = [f"sub{i}" for i in range(n)] + (["ensemble"] if n > 1 else [])
    if p.method.name in ("ffl", "dualnet"):
        outputs.append("fused")
    if p.method.name == "dualnet":
        outputs.append("average")
    return outputs


def check_tune(p: Params, raw: dict) -> None:
    """The search, checked before Ray starts: the metric exists, every dimension is a param whose
    edge values the schema accepts."""
    t = p.tune
    metrics = [f"val/acc/{o}" for o in method_outputs(p)]
    if t.metric not in metrics:
        raise ParamsError("tune.metric", f"{p.method.name} reports {', '.join(metrics)}; got {t.metric!r}")
    if p.data.val_fraction == 0:
        raise ParamsError("data.val_fraction", "tuning scores trials on the validation split: it must be > 0")
    if not t.space:
        raise ParamsError("tune.space", "the search space is empty")
    for key, dim in t.dimensions().items():
        if key.split(".")[0] in ("tune", "evaluate"):
            raise ParamsError(f"tune.space.{key}", "only training params can be searched")
        for value in dim.points():
            try:
                validate(set_dotted(copy.deepcopy(raw), key, value))
            except ParamsError as e:
                reason = "not a param" if e.reason.startswith("unknown key") else f"{value!r} is refused ({e})"
                raise ParamsError(f"tune.space.{key}", reason) from None


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


def method_spec(p: Params, num_classes: int) -> dict[str, Any]:
    """The constructor arguments of the configured method (``ffl.build_method`` takes them)."""
    m = p.method
    common = {"method": m.name, "archs": list(p.model.archs), "num_classes": num_classes, "shared": p.shared()}
    if m.name == "ffl":
        return common | {
            "fusion": p.fusion.enabled,
            "fusion_width": p.fusion.width,
            "fusion_kernel_size": p.fusion.kernel_size,
            "temperature": m.temperature,
            "rampup_epochs": m.rampup_epochs,
            "ce_weight": m.ce_weight,
            "ekd": m.ekd.enabled,
            "ekd_weight": m.ekd.weight,
            "fkd": m.fkd.enabled,
            "fkd_weight": m.fkd.weight,
        }
    if m.name in ("dml", "one"):
        return common | {
            "temperature": m.temperature,
            "rampup_epochs": m.rampup_epochs,
            "ce_weight": m.ce_weight,
            "kd_weight": m.kd_weight,
        }
    if m.name == "dualnet":
        return common | {
            "ce_weight": m.ce_weight,
            "epochs": p.train.epochs,
            "finetune_fraction": m.dualnet.finetune_fraction,
        }
    return common | {"ce_weight": m.ce_weight}
