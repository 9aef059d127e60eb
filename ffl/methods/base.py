"""The contract every method keeps, so that one engine trains them all.

``forward(images) -> {name: logits}``: every classifier the method has (``sub0``.. ``subN-1``,
``ensemble`` and, where there is one, ``fused``); all of them are evaluated.
``loss(outputs, targets, epoch) -> {term: scalar}``: the named terms; their sum is minimised.
The engine passes ``epoch`` as a 0-d tensor on the training device (a float works too).
``param_groups(weight_decay, aux_weight_decay)``: optimiser groups; auxiliary modules (fusion
module, gate) get their own weight decay, as in the authors' separate fusion optimiser.
``spec()``: the constructor arguments, plain data, saved next to the weights so that a trained
model can be rebuilt without the params file that made it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ffl.models.subnetworks import SubNetworks


class Method(nn.Module):
    name: ClassVar[str]
    # Whether every training step launches the same device work, so that one captured CUDA graph
    # can replay it. A method that decides in Python per step (DualNet's alternation) sets False:
    # a graph would freeze the decision taken at capture.
    static_step: ClassVar[bool] = True

    def __init__(self, archs: list[str], num_classes: int, shared: bool, **spec: Any):
        super().__init__()
        self.net = SubNetworks(archs, num_classes, shared=shared)
        self._spec = {"archs": list(archs), "num_classes": num_classes, "shared": shared, **spec}

    def spec(self) -> dict[str, Any]:
        return {"method": self.name, **self._spec}

    @property
    def num_subnets(self) -> int:
        return len(self.net)

    def auxiliary_modules(self) -> list[nn.Module]:
        """Modules that are not sub-networks (fusion module, gate): optimised with aux weight decay."""
        return []

    def param_groups(self, weight_decay: float, aux_weight_decay: float) -> list[dict]:
        aux = {id(p) for m in self.auxiliary_modules() for p in m.parameters()}
        main = [p for p in self.parameters() if id(p) not in aux]
        groups = [{"params": main, "weight_decay": weight_decay, "name": "subnets"}]
        aux_params = [p for m in self.auxiliary_modules() for p in m.parameters()]
        if aux_params:
            groups.append({"params": aux_params, "weight_decay": aux_weight_decay, "name": "auxiliary"})
        return groups

    @staticmethod
    def named_subnets(logits: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {f"sub{i}": z for i, z in enumerate(logits)}
        if len(logits) > 1:
            out["ensemble"] = torch.stack(logits).mean(0)
        return out

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine before each epoch; methods with epoch-dependent behaviour override it."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor, epoch: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract


class PeerDistillation(Method):
    """What DML and ONE share: CE on every sub-network plus a ramped-up, temperature-softened KD term."""

    def __init__(
        self,
        archs: list[str],
        num_classes: int,
        shared: bool,
        temperature: float,
        rampup_epochs: float,
        ce_weight: float,
        kd_weight: float,
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(
            archs,
            num_classes,
            shared,
            temperature=temperature,
            rampup_epochs=rampup_epochs,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
        )
        self.temperature = temperature
        self.rampup_epochs = rampup_epochs
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
