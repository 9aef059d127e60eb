"""Deep Mutual Learning (Zhang et al., CVPR 2018).

Independent peers (any architectures); each is trained with CE plus the mean over the other peers
of KL(peer || self), the peer detached. DML itself uses T = 1 and no ramp-up; the temperature and
ramp-up are kept as parameters so that DML can be run on the same footing as ONE and FFL.
"""

from __future__ import annotations

from ffl.losses import cross_entropy, kd_loss, sigmoid_rampup
from ffl.methods.base import PeerDistillation


class DML(PeerDistillation):
    name = "dml"

    def __init__(
        self,
        archs: list[str],
        num_classes: int,
        shared: bool = False,
        temperature: float = 1.0,
        rampup_epochs: float = 0.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
    ):
        if len(archs) < 2:
            raise ValueError(f"DML needs at least 2 peers, got {len(archs)}")
        if shared:
            raise ValueError("DML peers are independent networks: they cannot share low-level layers")
        super().__init__(archs, num_classes, shared, temperature, rampup_epochs, ce_weight, kd_weight)

    def forward(self, images):
        return self.named_subnets(self.net(images)[1])

    def loss(self, outputs, targets, epoch):
        n = self.num_subnets
        subs = [outputs[f"sub{i}"] for i in range(n)]
        terms = {f"ce_sub{i}": self.ce_weight * cross_entropy(z, targets) for i, z in enumerate(subs)}
        ramp = sigmoid_rampup(epoch, self.rampup_epochs)
        for i, student in enumerate(subs):
            peers = [kd_loss(student, teacher, self.temperature) for j, teacher in enumerate(subs) if j != i]
            terms[f"kd_sub{i}"] = ramp * self.kd_weight * sum(peers) / (n - 1)
        return terms
