"""Layer-wise Mutual Contrastive Learning (Yang, An, Xu, Li, Xu, Liu, TPAMI 2023, "Online Knowledge
Distillation via Mutual Contrastive Learning for Visual Recognition"; code: winycg/L-MCL
``main_layer_mcl_cifar_meta.py``, followed where the paper leaves details out).

Independent networks, each with three exits: two auxiliary ones (a fresh copy of stages 2 and 3
over stage 1's output, a fresh copy of stage 3 over stage 2's; each pooled into its own linear
classifier) and the network's own. Every exit's pooled feature has a projection head, and MCL's
four contrastive terms (``ffl.contrastive.pair_terms``) are taken between every exit of one network
and every exit of another, in both orders, each anchor weighted by a learned similarity of the
two features (``PairWeights``: sigmoid of the cosine of two linear projections). An aggregator
weighs each network's exits per sample; its logits learn by cross-entropy and teach every
network's final exit (KL at T, the target detached). The pair weights do not learn from this loss:
every ``meta_every`` steps a meta step looks ahead (``meta_steps`` SGD steps on the contrastive
loss, one on the exits' cross-entropy), differentiates the cross-entropy after them with respect
to the weighting network through the look-ahead, steps the weighting network, and leaves the
networks where they were. The networks' final exits are what it deploys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ffl.contrastive import Embed, masks, pair_terms
from ffl.errors import SettingError
from ffl.losses import cross_entropy, kd_loss
from ffl.methods.base import Method
from ffl.methods.registry import register_method
from ffl.methods.settings import setting
from ffl.models.registry import backbone_spec
from ffl.models.subnetworks import Classifier

CODE = "winycg/L-MCL"
MAIN = f"{CODE} main_layer_mcl_cifar_meta.py"
EXITS = 3  # two auxiliary exits and the network's own (the code's number_stage for CIFAR networks)
WEIGHT_DIM = 128  # the weighting network's projections (models/meta_network.py: nn.Linear(d, 128))
STAGED = ("cifar_resnet", "wide_resnet")  # backbones whose low layers end with stage 1, then stage 2


@dataclass(frozen=True, kw_only=True)
class LMCLSettings:
    vcl_weight: float = setting(0.1, "weight of the vanilla contrastive terms (alpha)", f"{MAIN} --alpha 0.1", ge=0)
    soft_vcl_weight: float = setting(
        1.0, "weight of the soft vanilla contrastive terms (gamma)", f"{MAIN} --gamma 1.0", ge=0
    )
    icl_weight: float = setting(0.1, "weight of the interactive contrastive terms (beta)", f"{MAIN} --beta 0.1", ge=0)
    soft_icl_weight: float = setting(
        1.0, "weight of the soft interactive contrastive terms (lambda)", f"{MAIN} --lam 1.0", ge=0
    )
    contrast_temperature: float = setting(
        0.1, "temperature of the embeddings' similarities (tau)", f"{MAIN} --tau 0.1", gt=0
    )
    temperature: float = setting(
        3.0, "temperature of the soft terms and of the aggregator's KD (T^2-scaled)", f"{MAIN} --kd_T 3", gt=0
    )
    embed_dim: int = setting(128, "width of each projection head", f"{MAIN} --feat-dim 128", ge=1)
    ce_weight: float = setting(1.0, "weight of every cross-entropy term", f"{MAIN}: unweighted sum", ge=0)
    meta_every: int = setting(
        50, "a meta step of the pair weights every this many steps of an epoch (its first included)",
        f"{MAIN} --meta-freq 50", ge=1,
    )  # fmt: skip
    meta_steps: int = setting(
        2, "look-ahead steps on the contrastive loss before the cross-entropy one", f"{MAIN} --times 2", ge=0
    )


class AuxiliaryExits(nn.Module):
    """A network's two auxiliary exits (the code's ``Auxiliary_Classifier``): fresh copies of the
    later stages of its architecture over the outputs of stages 1 and 2, each with its classifier."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        spec = backbone_spec(arch)
        first, second = spec.build(), spec.build()
        self.blocks = nn.ModuleList([nn.Sequential(first.low[-1], first.high), second.high])
        self.heads = nn.ModuleList(Classifier(spec.out_channels, num_classes) for _ in range(2))


class PairWeights(nn.Module):
    """The code's ``LossWeightNetwork``: a linear projection per (network, exit); the weight of a
    pair of exits for a sample is the sigmoid of the cosine of their projected features."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.proj = nn.ModuleList(nn.ModuleList(nn.Linear(c, WEIGHT_DIM) for _ in range(EXITS)) for c in channels)

    def forward(self, pooled: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """(B, 1) weights for every pair, in ``pairs`` order."""
        projected = [[p(f) for p, f in zip(ps, fs, strict=True)] for ps, fs in zip(self.proj, pooled, strict=True)]
        return [
            torch.sigmoid(F.cosine_similarity(projected[i][k], projected[j][z], dim=1, eps=1e-12))[:, None]
            for i, j, k, z in pairs(len(pooled))
        ]


class Aggregator(nn.Module):
    """The code's ``Aggregator``: per network, softmax weights over its exits from their
    concatenated pooled features (Linear(3d, d), ReLU, Linear(d, 3)); the exits' weighted logits."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(EXITS * c, c), nn.ReLU(inplace=True), nn.Linear(c, EXITS)) for c in channels
        )

    def forward(self, pooled, logits) -> list[torch.Tensor]:
        out = []
        for head, feats, exits in zip(self.heads, pooled, logits, strict=True):
            weights = torch.softmax(head(torch.cat(feats, dim=1)), dim=1)
            out.append(sum(z * weights[:, s : s + 1] for s, z in enumerate(exits)))
        return out


def pairs(n: int) -> list[tuple[int, int, int, int]]:
    """(network i, network j, exit of i, exit of j) over ordered pairs of networks and every pair of
    exits: the code's loop order, shared by the weights and the loss."""
    return [(i, j, k, z) for i in range(n) for j in range(n) if i != j for k in range(EXITS) for z in range(EXITS)]


class _Trained(nn.Module):
    """The parameters the meta step looks ahead with (the code's MetaSGD over ``net`` and
    ``criterion_mcl``): the networks, their auxiliary exits and the projection heads. A view of the
    method's own modules, not registered in it (the state dict names each parameter once)."""

    def __init__(self, method: LMCL):
        super().__init__()
        self.net, self.aux, self.embeds = method.net, method.aux, method.embeds
        self.method = [method]  # a list: not registered

    def forward(self, images):
        """(pooled features, logits, embeddings) of every exit, under the parameters given."""
        method = self.method[0]
        pooled, logits = method.exits(images)
        with torch.autocast(images.device.type, enabled=False):
            return pooled, logits, method.embeddings(pooled)


@register_method
class LMCL(Method):
    name = "lmcl"
    Settings = LMCLSettings
    reference = (
        "Yang et al., Online Knowledge Distillation via Mutual Contrastive Learning for Visual Recognition, "
        "TPAMI 2023; code " + CODE
    )
    differences = (
        "The code's CIFAR loader draws 2 images of each of 64 classes per batch (MPerClassSampler), so every "
        "anchor has one positive; here batches are the project's shuffle, an anchor has every other sample of its "
        "class as positives, and an anchor with none is left out of the mean (the code would divide by zero).",
        "The meta step is the code's MetaSGD (from L2T-ww) step for step, its reverse recursion included: where "
        "the recursion carries the momentum adjoint into the weights' adjoint it adds it whole, where exact "
        "differentiation would add it times the weight decay (the two agree with no look-ahead step on the "
        "contrastive loss; with the default two they do not). Kept, as the code is what was measured.",
        "The code's MetaSGD needs gradients zeroed in place (torch 1.7's zero_grad); here parameters that an "
        "objective does not reach take a zero gradient, as they did there (weight decay and momentum still move them).",
        "The weighting network is stepped by the main optimiser (the same SGD: lr, momentum, Nesterov and weight "
        "decay, as the code's own weight_optimizer has), so checkpoints carry its momentum.",
        "The code reports the best test accuracy over epochs of the best exit of the best network; this project "
        "reports the last epoch's network 1 (sub0, its final exit, as deployed), and every exit beside it.",
        "The code's schedule is cosine over 300 epochs with weight decay 5e-4; the shared train section sets both "
        "here.",
        "The heads, the pair weights, the aggregator and the contrastive terms run in fp32 under bf16/fp16 autocast.",
    )
    subnets = (2, None)
    default_subnets = 2
    sharing = "independent"
    static_step = False  # every meta_every steps the host runs a look-ahead that no captured graph holds
    not_stackable = "adds auxiliary exits, heads and a meta step that ffl/stacked.py does not lay side by side"

    @classmethod
    def outputs(cls, n, settings):
        exits = [f"sub{i}_exit{k}" for i in range(n) for k in (1, 2)]
        return [f"sub{i}" for i in range(n)] + ["ensemble", *exits, *(f"agg{i}" for i in range(n))]

    @classmethod
    def deployed(cls, n, settings):
        return "sub0"

    @classmethod
    def check_settings(cls, archs, settings):
        for arch in archs:
            if backbone_spec(arch).family not in STAGED:
                raise SettingError(
                    "archs", f"{arch}: L-MCL's auxiliary exits are built for CIFAR ResNets and WRNs (resnet32, wrn16_2)"
                )

    @classmethod
    def has_own_step(cls, settings) -> bool:
        return True

    def __init__(self, archs, num_classes, shared=None, settings=None, **kwargs):
        super().__init__(archs, num_classes, shared, settings, **kwargs)
        channels = self.net.out_channels
        self.aux = nn.ModuleList(AuxiliaryExits(a, num_classes) for a in archs)
        self.embeds = nn.ModuleList(
            nn.ModuleList(Embed(c, self.settings.embed_dim) for _ in range(EXITS)) for c in channels
        )
        self.pair_weights = PairWeights(channels)
        self.aggregator = Aggregator(channels)
        self._step_in_epoch = 0

    def set_epoch(self, epoch, epochs):
        self._step_in_epoch = 0  # the code's batch_idx: meta steps at 0, meta_every, ... of every epoch

    def exits(self, images):
        """Per network: its exits' pooled features (fp32) and logits, auxiliary exits first."""
        pooled, logits = [], []
        for branch, head, aux in zip(self.net.branches, self.net.heads, self.aux, strict=True):
            low, high = branch[0], branch[1]
            stage1 = low[:-1](images)
            stage2 = low[-1](stage1)
            maps = [aux.blocks[0](stage1), aux.blocks[1](stage2), high(stage2)]
            heads = [*aux.heads, head]
            pooled.append([m.float().mean((2, 3)) for m in maps])
            logits.append([h(m) for h, m in zip(heads, maps, strict=True)])
        return pooled, logits

    def embeddings(self, pooled):
        return [[e(f) for e, f in zip(es, fs, strict=True)] for es, fs in zip(self.embeds, pooled, strict=True)]

    def forward(self, images):
        pooled, logits = self.exits(images)
        with torch.autocast(images.device.type, enabled=False):
            out = self.named_subnets([z[-1] for z in logits])
            for i, z in enumerate(logits):
                out |= {f"sub{i}_exit1": z[0], f"sub{i}_exit2": z[1]}
            out |= {f"agg{i}": a for i, a in enumerate(self.aggregator(pooled, logits))}
            if self.training:
                out["_pooled"] = pooled
                out["_exit_logits"] = logits
                out["_embeddings"] = self.embeddings(pooled)
        return out

    def contrastive_terms(self, embeddings, targets, weights) -> dict[str, torch.Tensor]:
        """The four terms summed over every pair of exits of two networks (``Sup_MCL_Loss_Meta``)."""
        s = self.settings
        positives, others = masks(targets)
        total = dict.fromkeys(("vcl", "soft_vcl", "icl", "soft_icl"), 0.0)
        for (i, j, k, z), w in zip(pairs(len(embeddings)), weights, strict=True):
            terms = pair_terms(
                embeddings[i][k], embeddings[j][z], positives, others, s.contrast_temperature, s.temperature, w
            )
            total = {name: total[name] + value for name, value in terms.items()}
        return {name: getattr(s, f"{name}_weight") * value for name, value in total.items()}

    def loss(self, outputs, targets, epoch):
        s = self.settings
        n = self.num_subnets
        logits = outputs["_exit_logits"]
        with torch.autocast(targets.device.type, enabled=False), torch.no_grad():
            weights = self.pair_weights(outputs["_pooled"])
        terms = {}
        for i in range(n):
            for k, z in enumerate(logits[i]):
                name = f"ce_sub{i}" if k == EXITS - 1 else f"ce_sub{i}_exit{k + 1}"
                terms[name] = s.ce_weight * cross_entropy(z, targets)
        for i in range(n):
            terms[f"ce_agg{i}"] = s.ce_weight * cross_entropy(outputs[f"agg{i}"], targets)
        for i in range(n):  # every network's final exit learns from every aggregator, its own included
            terms[f"kd_sub{i}"] = sum(kd_loss(logits[i][-1], outputs[f"agg{j}"], s.temperature) for j in range(n))
        with torch.autocast(targets.device.type, enabled=False):
            return terms | self.contrastive_terms(outputs["_embeddings"], targets, weights)

    # -- the step: one update, and every meta_every steps the pair weights' meta step -------------
    def train_step(self, images, targets, epoch, ctx):
        with ctx.autocast():
            outputs = self(images)
            terms = self.loss(outputs, targets, epoch)
        ctx.update(torch.stack(list(terms.values())).sum())
        if self._step_in_epoch % self.settings.meta_every == 0:
            self.meta_step(images, targets, ctx)
        self._step_in_epoch += 1
        outputs = {k: v.detach() for k, v in outputs.items() if not k.startswith("_")}
        return outputs, terms

    def inner_objective(self, exits, targets):
        """The look-ahead's contrastive loss, the pair weights with their gradient (``inner_objective``)."""
        pooled, _, embeddings = exits
        with torch.autocast(targets.device.type, enabled=False):
            weights = self.pair_weights(pooled)
            return torch.stack(list(self.contrastive_terms(embeddings, targets, weights).values())).sum()

    def outer_objective(self, exits, targets):
        """Cross-entropy of every exit (``outer_objective``): no aggregator, no KD, no contrast."""
        return sum(cross_entropy(z, targets) for zs in exits[1] for z in zs)

    def meta_step(self, images, targets, ctx) -> None:
        """The code's meta step (MetaSGD from L2T-ww, rollback on): from the current weights, SGD with
        the optimiser's lr, momentum and weight decay (no Nesterov, fresh momentum) looks ahead
        ``meta_steps`` steps on the contrastive loss and one on the exits' cross-entropy; the
        cross-entropy there is carried back through the steps in reverse, one Hessian-vector product
        each, and what reaches the pair weights steps them. The networks stay where they were.

        The reverse recursion is the code's, term for term: its update of the weights' adjoint adds
        the momentum adjoint where exact differentiation would add it times the weight decay (with
        one look-ahead step the two agree; docs/methods.md)."""
        group = ctx.optimizer.param_groups[0]
        lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        trained = _Trained(self)
        names = [name for name, _ in trained.named_parameters()]
        buffers = dict(trained.named_buffers())
        scratch = {k: v.clone() for k, v in buffers.items()}
        objectives = [self.inner_objective] * self.settings.meta_steps + [self.outer_objective]

        def loss_at(theta, objective, state_buffers, graph: bool):
            theta = [p.detach().requires_grad_() for p in theta]
            with ctx.autocast():
                exits = functional_call(trained, dict(zip(names, theta, strict=True)) | state_buffers, (images,))
            loss = objective(exits, targets)
            return loss, torch.autograd.grad(loss, theta, create_graph=graph, allow_unused=True), theta

        path = [[p.detach() for _, p in trained.named_parameters()]]
        velocity = None
        for objective in objectives:  # the look-ahead, recorded
            _, grads, _ = loss_at(path[-1], objective, scratch, graph=False)
            steps = [(0 if g is None else g) + decay * p for p, g in zip(path[-1], grads, strict=True)]
            velocity = steps if velocity is None else [momentum * v + d for v, d in zip(velocity, steps, strict=True)]
            path.append([p - lr * v for p, v in zip(path[-1], velocity, strict=True)])
        _, adjoint, _ = loss_at(path[-1], self.outer_objective, scratch, graph=False)
        adjoint = [torch.zeros_like(p) if a is None else a for p, a in zip(path[-1], adjoint, strict=True)]
        carried = [torch.zeros_like(a) for a in adjoint]
        phi = list(self.pair_weights.parameters())
        hyper = [torch.zeros_like(p) for p in phi]
        for t in reversed(range(len(objectives))):
            # The first look-ahead forward, recomputed last, moves the running statistics once.
            _, grads, theta = loss_at(path[t], objectives[t], buffers if t == 0 else scratch, graph=True)
            used = [(g, -lr * a + c) for g, a, c in zip(grads, adjoint, carried, strict=True) if g is not None]
            x = sum((g * v).sum() for g, v in used)
            back = torch.autograd.grad(x, theta + phi, allow_unused=True)
            hvp, to_phi = back[: len(theta)], back[len(theta) :]
            hyper = [h if g is None else h + g for h, g in zip(hyper, to_phi, strict=True)]
            adjoint, carried = (
                [
                    a * (1 - lr * decay) + c + (0 if h is None else h)
                    for a, c, h in zip(adjoint, carried, hvp, strict=True)
                ],
                [momentum * c - lr * momentum * a for a, c in zip(adjoint, carried, strict=True)],
            )
        # The main optimiser steps the pair weights alone: theirs are the only gradients now.
        ctx.update(sum((p * g).sum() for p, g in zip(phi, hyper, strict=True)))
