"""The contract every method keeps, so that one engine trains them all, and what it declares about itself.

A method is one file under ``ffl/methods/`` holding one ``Method`` subclass, registered by name on
import. The class declares everything the pipeline needs to know (the params schema, the checks,
the tune-space checks and docs/methods.md are built from these declarations):

- ``Settings``: a frozen dataclass of its own settings, each with its default (from its own paper
  and code), bounds, doc and source (``ffl.methods.settings.setting``);
- ``subnets`` (min, max) and ``default_subnets``: how many sub-networks it trains;
- ``sharing``: ``shared`` (branches over shared low-level layers), ``independent`` or ``either``;
- ``outputs(n, settings)``: the classifiers it reports;
- ``static_step``: whether every step of a phase launches the same device work (a whole-step CUDA
  graph can replay it); ``partial_updates``: whether some steps leave parameters without gradients
  (DDP must then look for them); ``stackable``: whether K runs of it can train as one model with
  their layers side by side (``ffl.stacked``: its forward combines sub-networks only element-wise
  or through the fusion module); ``reference`` and ``differences``: its source and what differs
  from it.

At run time: ``forward(images) -> {name: logits}`` (every classifier, all evaluated);
``loss(outputs, targets, epoch) -> {term: scalar}`` (their sum is minimised; ``epoch`` is a 0-d
tensor on the training device, or a float). A method whose step is more than one forward and one
update (DML's peers updated in turn) says so in ``has_own_step`` and implements ``train_step``.
``spec()`` is plain data that rebuilds the method (saved next to the weights).

Two extensions, for the methods that came after FFL:
- ``train_views(n, settings)``: how many independently augmented views of each training batch the
  method takes (KDCL and PCL: one per network). With V > 1, training's ``forward`` receives the
  views stacked along the batch (V*B images, view v in rows v*B:(v+1)*B; ``split_views``) and
  returns B rows per classifier; evaluation gives one view as always.
- ``forward`` may add values only its ``loss`` reads (pooled features, attention-weighted teachers)
  under names that start with ``_``: they are not classifiers, so nothing scores or exports them.
- ``after_step()``: called after every optimiser step, inside a captured whole-step CUDA graph
  too, so it is device work without host decisions (PCL's temporal-mean teachers). What it keeps
  lives in parameters without gradients or buffers, so checkpoints and model files carry it.
- ``step_phase()`` and ``end_step()``: a method whose steps differ in what the host decides
  (DualNet: which network learns this step) names the next step's phase; the whole-step graph
  keeps one captured graph per phase. ``end_step()`` runs on the host after every training step,
  outside any graph, and moves to the next phase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from ffl.errors import SettingError
from ffl.methods import settings as settings_mod
from ffl.models.subnetworks import SubNetworks, check_fusable


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoSettings:
    pass


class Method(nn.Module):
    name: ClassVar[str]
    Settings: ClassVar[type] = NoSettings
    reference: ClassVar[str] = ""
    differences: ClassVar[tuple[str, ...]] = ()  # known differences from the original, with the reason
    subnets: ClassVar[tuple[int, int | None]] = (1, None)
    default_subnets: ClassVar[int] = 2
    sharing: ClassVar[str] = "either"  # shared | independent | either
    # Whether every training step of a phase (``step_phase``) launches the same device work, so that
    # one captured CUDA graph per phase can replay it.
    static_step: ClassVar[bool] = True
    # Whether some steps leave parameters without gradients (DualNet's alternation): DDP must then
    # look for unused parameters in every backward pass.
    partial_updates: ClassVar[bool] = False
    # Whether K runs (a row's seeds) can train as one model, each layer the K runs' side by side
    # (ffl.stacked): the forward may mix sub-networks only element-wise or through the fusion
    # module; a gate, attention or a layer over concatenated features would mix the runs.
    stackable: ClassVar[bool] = False
    # Why not, where it is not (read by ffl.stacked's refusal and docs/methods.md).
    not_stackable: ClassVar[str] = (
        "combines its sub-networks beyond element-wise sums (a gate, attention or concatenated features), "
        "which K runs laid side by side would mix"
    )
    # What ``model.shared: auto`` gives, where the method decides it otherwise than ``sharing`` says
    # (``resolve_shared``); docs/methods.md reads it.
    sharing_doc: ClassVar[str] = ""

    def __init__(self, archs: list[str], num_classes: int, shared: bool | None = None, settings=None, **kwargs):
        super().__init__()
        self.settings = settings_mod.build(self.Settings, settings, **kwargs)
        archs = list(archs)
        shared = self.resolve_shared(archs, shared)
        self.check_config(archs, shared, self.settings)
        self.net = SubNetworks(archs, num_classes, shared=shared)
        self._spec = {"archs": archs, "num_classes": num_classes, "shared": shared}

    # -- declarations the pipeline reads -------------------------------------------------------
    @classmethod
    def resolve_shared(cls, archs: list[str], shared: bool | None) -> bool:
        """``shared`` None (params: auto) takes the method's own setting."""
        if shared is None:
            if cls.sharing == "either":
                return len(set(archs)) == 1
            return cls.sharing == "shared"
        if shared and cls.sharing == "independent":
            raise SettingError("shared", f"{cls.name} trains independent networks; set it to auto or false")
        if not shared and cls.sharing == "shared":
            raise SettingError("shared", f"{cls.name}'s branches share their low-level layers; set it to auto or true")
        return shared

    @classmethod
    def check_config(cls, archs: list[str], shared: bool, settings) -> None:
        """Everything the method refuses, raised as SettingError naming archs, shared or a setting."""
        low, high = cls.subnets
        n = len(archs)
        if n < low:
            raise SettingError("archs", f"{cls.name} needs at least {low} sub-networks, got {n}")
        if high is not None and n > high:
            raise SettingError("archs", f"{cls.name} takes at most {high} sub-networks, got {n}")
        if shared and len(set(archs)) > 1:
            raise SettingError("shared", f"branches sharing low-level layers need one architecture, got {archs}")
        cls.check_settings(archs, settings)

    # The settings a model file of this method held as flat keyword arguments, before each method
    # owned a settings section (methods of that time: FFL, DML, ONE).
    flat_settings: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_from_flat_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """A model file saved before each method owned a settings section: the method takes its
        ``flat_settings`` out of ``spec`` (the run is the same), and the arguments no method takes
        any more go."""
        settings = {k: spec.pop(k) for k in cls.flat_settings if k in spec}
        for k in ("ce_weight", "epochs", "finetune_fraction"):
            spec.pop(k, None)
        return settings

    @classmethod
    def check_settings(cls, archs: list[str], settings) -> None:
        """What a method's settings and architectures must satisfy together (fusable maps, ...)."""

    @staticmethod
    def require_fusable(archs: list[str]) -> None:
        """For methods that fuse feature maps: their spatial sizes must agree (SettingError on archs)."""
        try:
            check_fusable(archs)
        except ValueError as e:
            raise SettingError("archs", str(e)) from None

    @classmethod
    def outputs(cls, n: int, settings) -> list[str]:
        """The classifiers it reports, in order."""
        return [f"sub{i}" for i in range(n)] + (["ensemble"] if n > 1 else [])

    # -- run time ------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"method": self.name, **self._spec, "settings": dataclasses.asdict(self.settings)}

    @property
    def num_subnets(self) -> int:
        return len(self.net)

    @classmethod
    def has_own_step(cls, settings) -> bool:
        """True when ``train_step`` (several updates per batch) replaces one forward + one update."""
        return False

    @property
    def own_step(self) -> bool:
        return self.has_own_step(self.settings)

    def train_step(self, images, targets, epoch, ctx) -> tuple[dict, dict]:
        """For ``own_step`` methods: one training step on a batch. ``ctx.autocast()`` is the forward's
        precision context; ``ctx.update(loss)`` backpropagates ``loss``, steps the optimiser for the
        parameters that received gradients and clears them. Returns (outputs, loss terms) for the
        epoch's statistics."""
        raise NotImplementedError  # pragma: no cover

    @classmethod
    def train_views(cls, n: int, settings) -> int:
        """Independently augmented views of each training batch (1: the batch itself): one per
        sub-network where the method's settings say ``distinct_views`` (KDCL, PCL)."""
        return n if getattr(settings, "distinct_views", False) else 1

    @staticmethod
    def split_views(images: torch.Tensor, views: int) -> list[torch.Tensor]:
        """The views of a training batch (``train_views``), each of B images."""
        return list(images.chunk(views)) if views > 1 else [images]

    def distinct_views(self, images: torch.Tensor) -> list[torch.Tensor] | None:
        """Each sub-network's own view of a training batch where the method trains on several
        (``train_views``), else None: every sub-network sees ``images`` itself."""
        n = self.num_subnets
        return self.split_views(images, n) if self.training and self.train_views(n, self.settings) > 1 else None

    def sub_outputs(self, outputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The sub-networks' logits (``sub0``, ``sub1``, ...) of ``forward``'s outputs, in order."""
        return [outputs[f"sub{i}"] for i in range(self.num_subnets)]

    def after_step(self) -> None:
        """After every optimiser step: device work only (it is replayed inside a captured step)."""

    def step_phase(self) -> Hashable:
        """What the host decided about the next training step (None: every step is alike). The
        whole-step graph captures one graph per phase."""
        return None

    def end_step(self) -> None:
        """On the host, after every training step and outside any captured graph: the next phase."""

    def auxiliary_modules(self) -> list[nn.Module]:
        """Modules that are not sub-networks (fusion module, gate): optimised with ``aux_weight_decay``."""
        return []

    def aux_weight_decay(self) -> float | None:
        """The auxiliary modules' own weight decay; None: the same as the sub-networks'."""
        return None

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The optimiser's groups: parameters that learn by gradient (a temporal-mean copy, which
        ``after_step`` moves, has requires_grad off and is not optimised)."""
        aux_params = [p for m in self.auxiliary_modules() for p in m.parameters() if p.requires_grad]
        aux = {id(p) for p in aux_params}
        main = [p for p in self.parameters() if id(p) not in aux and p.requires_grad]
        groups = [{"params": main, "weight_decay": weight_decay, "name": "subnets"}]
        if aux_params:
            own = self.aux_weight_decay()
            groups.append(
                {"params": aux_params, "weight_decay": weight_decay if own is None else own, "name": "auxiliary"}
            )
        return groups

    @staticmethod
    def named_subnets(logits: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {f"sub{i}": z for i, z in enumerate(logits)}
        if len(logits) > 1:
            out["ensemble"] = torch.stack(logits).mean(0)
        return out

    @classmethod
    def deployed(cls, n: int, settings) -> str:
        """The classifier a user deploys (what evaluation's confusion matrix and ``ffl predict``
        default to): the fused one where there is one, else the ensemble, else the network."""
        names = cls.outputs(n, settings)
        return next(name for name in ("fused", "ensemble", "sub0") if name in names)

    def standalone(self, classifier: str) -> nn.Module | None:
        """The classifier as a network of its own (images -> its logits), without the method's other
        parts, or None where it needs them (fused, ensembles). Sub-network i is its shared layers,
        branch and head; methods with other single-network classifiers add theirs."""
        if is_subnetwork(classifier):
            return self.net.subnetwork(int(classifier[3:]))
        return None

    def classifier_features(self, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, nn.Linear]]:
        """``{classifier: (feature map, linear layer)}`` for every classifier that is global average
        pooling and a linear layer over a feature map, so that its class activation map is the
        layer's class weights over the map (Zhou et al., CVPR 2016). Methods with more such
        classifiers (a fused one) add theirs."""
        feats, _ = self.net(images)
        return {f"sub{i}": (f, head.fc) for i, (f, head) in enumerate(zip(feats, self.net.heads))}

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the engine before each epoch; methods with epoch-dependent behaviour override it."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor, epoch) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract


def is_subnetwork(classifier: str) -> bool:
    """Whether ``classifier`` names a sub-network's own classifier (``sub0``, ``sub1``, ...), not
    another classifier of the method (an ensemble, L-MCL's ``sub0_exit1``)."""
    return classifier.startswith("sub") and classifier[3:].isdigit()


@contextmanager
def frozen_bn_statistics(module: nn.Module):
    """Batch-norm layers normalise with batch statistics but leave their running statistics alone
    (momentum 0): a second forward pass of the same batch must not count it twice."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
