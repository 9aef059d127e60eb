"""The params schema. Unknown keys, missing keys, wrong types and out-of-range values are refused with
the dotted key in the message; so are combinations no method can train. Nothing has a default here:
the params file is the one set of defaults, and every value that runs is a value that the file (and
so `dvc exp show`) records. Each method's section (``method.<name>``) is built from the method's
own declaration (ffl/methods), never written here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    create_model,
    field_validator,
)

from ffl.errors import SettingError
from ffl.methods import METHODS
from ffl.methods import settings as method_settings
from ffl.models import backbone_spec
from ffl.step_mode import COMPILE_MODES, step_mode
from pipeline.errors import ParamsError
from pipeline.params.base import MAX_BATCH, MAX_EPOCHS, REQUIRED, Section
from pipeline.params.search import TuneParams

# Every float in params must be finite: an .inf learning rate or temperature is never meant.
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


MISSING = REQUIRED + " (the repository's params.yaml lists every key)"


class ShapesParams(Section):
    train_per_class: int = Field(ge=1, le=100_000)  # 10 classes of 32x32 images: 3 GB at the bound
    test_per_class: int = Field(ge=1, le=100_000)
    noise: float = Field(ge=0, le=1)


class AugmentParams(Section):
    pad: int = Field(ge=0)
    pad_mode: Literal["reflect", "zeros", "replicate"]
    flip: bool


def _auto_or_workers(v):
    if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ValueError(f"expected auto or a whole number of workers (0: decode in the training process), got {v!r}")
    return v


AutoWorkers = Annotated[Literal["auto"] | int, BeforeValidator(_auto_or_workers)]


class FilesParams(Section):
    """Datasets read from image files (imagenet, imagefolder): decoding and the standard ImageNet crops."""

    image_size: int = Field(ge=8)
    resize: int = Field(ge=8)
    # auto: the cores this process may use, at most 8 (ffl.data.file_loader.default_workers)
    workers: AutoWorkers

    @field_validator("resize")
    @classmethod
    def _covers_crop(cls, resize, info):
        size = info.data.get("image_size")
        if size is not None and resize < size:
            raise ValueError(f"must be at least image_size ({size}): evaluation centre-crops the resized image")
        return resize


FILE_SOURCES = ("imagenet", "imagefolder")


class DataParams(Section):
    source: Literal["shapes", "cifar10", "cifar100", "imagenet", "imagefolder"]
    seed: int = Field(ge=0)  # the dataset's own seed (generation, validation split), not training's
    root: str
    download: bool
    # clean: hold val_fraction of the training set out for model selection and tuning, drop the
    # last partial batch. paper: the authors' protocol, every training image and the last batch.
    protocol: Literal["clean", "paper"]
    val_fraction: float = Field(ge=0, lt=1)
    shapes: ShapesParams
    augment: AugmentParams
    files: FilesParams

    def split_fraction(self) -> float:
        """The validation fraction prepare holds out: none under the paper's protocol."""
        return 0.0 if self.protocol == "paper" else self.val_fraction

    def keep_last_batch(self) -> bool:
        """Whether training keeps each epoch's last, smaller batch: the paper's protocol does."""
        return self.protocol == "paper"

    def provenance(self) -> dict:
        """Every param that changes the prepared dataset, as dotted keys: prepare records it, train
        and evaluate refuse prepared data (or a model) that was made with other values."""
        out = {"data.source": self.source, "data.seed": self.seed, "data.val_fraction": self.split_fraction()}
        if self.source == "shapes":
            out |= {f"data.shapes.{k}": v for k, v in self.shapes.model_dump().items()}
        elif self.source in ("imagenet", "imagefolder"):
            out["data.root"] = self.root  # the index holds paths under it (CIFAR's files are md5-checked)
        return out


def _known_arch(name: str) -> str:
    backbone_spec(name)  # ValueError names the known architectures
    return name


Arch = Annotated[str, AfterValidator(_known_arch)]


def _auto_or_bool(v):
    # One clear message instead of one per member of the union.
    if v != "auto" and not isinstance(v, bool):
        raise ValueError(f"expected auto, true or false, got {v!r}")
    return v


MAX_SUBNETS = 64  # far beyond any paper's count; a typo's 100000 would otherwise build for hours


def _auto_or_count(v):
    if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SUBNETS):
        raise ValueError(f"expected auto or a whole number from 1 to {MAX_SUBNETS}, got {v!r}")
    return v


AutoBool = Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)]
AutoCount = Annotated[Literal["auto"] | int, BeforeValidator(_auto_or_count)]


class ModelParams(Section):
    arch: Arch  # every sub-network's architecture
    subnets: AutoCount  # how many; auto = the method's own default (docs/methods.md)
    archs: list[Arch] | None = Field(min_length=1, max_length=MAX_SUBNETS)  # one per sub-network, for different archs
    # auto: the method's own setting (FFL: shared when the archs are equal; ONE: shared; others: not).
    shared: AutoBool


# -- each method's section, from its declaration ------------------------------------------------


def _odd(v):
    if v is not None and v % 2 == 0:
        raise ValueError("must be odd, so that the feature map keeps its size")
    return v


def settings_section(cls) -> type[Section]:
    """A strict pydantic section with the fields and bounds the dataclass declares. Every field is
    required: the dataclass's defaults (the method's paper) are what docs/methods.md lists and what
    a new params section starts from, never values filled in behind the params file's back."""
    types = method_settings.hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = types[f.name]
        if method_settings.is_settings(tp):
            fields[f.name] = (settings_section(tp), Field(description=f.metadata.get("doc", "")))
            continue
        bounds = dict(f.metadata.get("bounds", {}))
        if f.metadata.get("odd"):
            tp = Annotated[tp, AfterValidator(_odd)]
        fields[f.name] = (tp, Field(description=f.metadata.get("doc", ""), **bounds))
    return create_model(f"{cls.__name__}Params", __base__=Section, **fields)


def _method_params() -> type[Section]:
    """``method.name`` and one section per method; only the selected method's section is required
    (the others do not change the run, and a params file for one method need not list them)."""
    names = tuple(sorted(METHODS, key=lambda n: n != "ffl"))  # the paper's method first
    fields: dict[str, Any] = {"name": (Literal[names], ...)}
    for name, cls in METHODS.items():
        fields[name] = (settings_section(cls.Settings) | None, None)
    return create_model("MethodParams", __base__=Section, **fields)


MethodParams = _method_params()


class TrainParams(Section):
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(ge=1, le=MAX_BATCH)
    lr: PositiveFloat
    momentum: float = Field(ge=0, lt=1)
    nesterov: bool
    weight_decay: NonNegFloat
    milestones: list[Annotated[float, Field(gt=0, lt=1)]]
    gamma: float = Field(gt=0, le=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    channels_last: bool
    # Whole training step (forward, backward, optimiser, metric sums) captured as one CUDA graph;
    # auto: where ffl.step_mode allows it (GPU, a static step, not fp16).
    cuda_graph: AutoBool
    # torch.compile mode; auto: see ffl.step_mode (off on CPUs and under the whole-step graph).
    compile: Literal[("auto", "off", *COMPILE_MODES)]
    device: str
    # PyTorch DDP processes (the world size): `ffl train` starts them under torchrun on this machine
    # (or checks what an outside torchrun started). batch_size is the global batch (ffl.distributed).
    processes: int = Field(ge=1, le=1024)

    @field_validator("device")
    @classmethod
    def _device(cls, d):
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", d):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return d

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, m):
        if any(b <= a for a, b in itertools.pairwise(m)):
            raise ValueError("must be strictly increasing fractions of the epochs")
        return m

    def milestone_epochs(self) -> list[int]:
        """The epochs at which the lr drops, nearest to the fractions (halves up), never epoch 0:
        a one-epoch run trains at train.lr, not already at lr x gamma."""
        return [max(1, math.floor(f * self.epochs + 0.5)) for f in self.milestones]


class EvaluateParams(Section):
    batch_size: int = Field(ge=1, le=MAX_BATCH)


class ReproduceParams(Section):
    """`ffl reproduce`: how its runs share the machines (Ray resources per run)."""

    runs_per_gpu: int = Field(ge=1, le=64)  # runs packed onto one GPU (each takes 1/runs_per_gpu of it)
    cpus_per_run: float = Field(gt=0)
    # A row's seeds trained as one model (ffl.stacked) where the method allows: auto = on GPUs.
    stack_seeds: AutoBool


class Params(Section):
    seed: int = Field(ge=0, lt=2**32)  # numpy's and every loader's seed range (seeds of epochs derive from it)
    data: DataParams
    model: ModelParams
    method: MethodParams
    train: TrainParams
    evaluate: EvaluateParams
    tune: TuneParams
    reproduce: ReproduceParams
    # Where these params came from (the file and the -S given), for hints that name a command.
    _origin: tuple[str, tuple[str, ...]] | None = PrivateAttr(default=None)

    def command(self, name: str) -> str:
        """`ffl <name>` as the user would type it for these same params (their -p and -S)."""
        import shlex

        path, overrides = self._origin or ("params.yaml", ())
        args = ["ffl", name] + (["-p", path] if path != "params.yaml" else [])
        args += [a for o in overrides for a in ("-S", o)]
        return shlex.join(args)

    @property
    def method_class(self):
        return METHODS[self.method.name]

    def settings(self):
        """The selected method's settings, as the method's own dataclass."""
        section = getattr(self.method, self.method.name)
        return method_settings.build(self.method_class.Settings, section.model_dump())

    def archs(self) -> list[str]:
        m = self.model
        if m.archs is not None:
            return list(m.archs)
        n = self.method_class.default_subnets if m.subnets == "auto" else m.subnets
        return [m.arch] * n

    def shared(self) -> bool:
        return self.method_class.resolve_shared(
            self.archs(), None if self.model.shared == "auto" else self.model.shared
        )


def params_key(key: str, p: Params | None = None) -> str:
    """The params key of a SettingError's key, which the library words in its own terms: a
    training option (``compile``), the networks (``archs``, ``shared``) or a setting of the method
    (``fusion.kernel_size``). The one translation from the library's names to params.yaml's."""
    if key in TrainParams.model_fields:
        return f"train.{key}"
    if key == "archs":
        return "model.archs" if p is None or p.model.archs is not None else "model.subnets"
    if key == "shared":
        return "model.shared"
    return f"method.{p.method.name}.{key}" if p is not None else f"method settings: {key}"


def check_consistency(p: Params) -> None:
    """What no single key can say wrong on its own."""
    if getattr(p.method, p.method.name) is None:
        reason = "the selected method's section is required" + MISSING.removeprefix("required key is missing")
        raise ParamsError(f"method.{p.method.name}", reason)
    if p.data.download and p.data.source in FILE_SOURCES:
        raise ParamsError("data.download", f"{p.data.source} cannot be downloaded: place it under data.root")
    if p.model.archs is not None and p.model.subnets not in ("auto", len(p.model.archs)):
        raise ParamsError("model.subnets", f"{p.model.subnets} does not match the {len(p.model.archs)} model.archs")
    cls, archs = p.method_class, p.archs()
    try:
        settings = p.settings()
        shared = p.shared()
        cls.check_config(archs, shared, settings)
    except SettingError as e:
        raise ParamsError(params_key(e.key, p), e.reason) from None
    t = p.train
    if p.data.source == "shapes" and p.data.split_fraction():
        per_class = p.data.shapes.train_per_class
        if round(per_class * (1 - p.data.split_fraction())) < 1:
            raise ParamsError("data.val_fraction", f"leaves no training images of {per_class} per class")
    device_type = None if t.device == "auto" else t.device.split(":")[0]
    try:
        step_mode(cls, settings, device_type, t.precision, t.compile, t.cuda_graph, t.processes)
    except SettingError as e:
        raise ParamsError(params_key(e.key, p), e.reason) from None
    if t.batch_size % t.processes:
        raise ParamsError(
            "train.batch_size",
            f"{t.batch_size} does not split evenly over train.processes={t.processes} "
            "(the global batch: each process takes batch_size / processes)",
        )
    if t.nesterov and t.momentum == 0:
        raise ParamsError("train.nesterov", "Nesterov momentum needs train.momentum > 0")


def method_outputs(p: Params) -> list[str]:
    """The classifiers the configured method reports (their validation accuracy can be tuned for)."""
    return p.method_class.outputs(len(p.archs()), p.settings())


def method_spec(p: Params, num_classes: int) -> dict[str, Any]:
    """The constructor arguments of the configured method (``ffl.build_method`` takes them)."""
    settings = dataclasses.asdict(p.settings())
    return {
        "method": p.method.name,
        "archs": p.archs(),
        "num_classes": num_classes,
        "shared": p.shared(),
        "settings": settings,
    }
