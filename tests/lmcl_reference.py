"""A port of L-MCL's loss, meta step and training step from the authors' code (winycg/L-MCL at
2c0901e: losses/cifar_sup_layer_mcl_meta_loss.py, losses/meta_optimizers.py, models/meta_network.py,
models/aggregator.py, main_layer_mcl_cifar_meta.py train()), as close to it as runs on a CPU:
``.cuda()`` dropped, ``args`` a namespace, and ``zero_grad(set_to_none=False)`` where the code ran on
torch 1.7, whose zero_grad zeroed gradients in place (on torch 2 its MetaSGD would meet None
gradients). The fidelity tests hold ffl's LMCL to it.
"""

import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn, optim


class SupMCL(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.kl = KLDiv(T=args.kd_T)

    def forward(self, embeddings_a, embeddings_b, labels, weight):
        labels = labels.unsqueeze(0)
        intra_mask = torch.eq(labels, labels.T).float() - torch.eye(labels.size(1))
        diag_mask = 1.0 - torch.eye(labels.size(1))

        inter_logits = []
        soft_icl_loss = 0.0
        cos_simi_ij = torch.div(torch.mm(embeddings_a, embeddings_b.T), self.args.tau)
        inter_logits.append(cos_simi_ij)
        cos_simi_ji = torch.div(torch.mm(embeddings_b, embeddings_a.T), self.args.tau)
        inter_logits.append(cos_simi_ji)
        soft_icl_loss += self.kl(cos_simi_ij, cos_simi_ji.detach(), weight)
        soft_icl_loss += self.kl(cos_simi_ji, cos_simi_ij.detach(), weight)

        icl_loss = 0.0
        for logit in inter_logits:
            log_prob = logit - torch.log((torch.exp(logit) * diag_mask).sum(1, keepdim=True))
            mean_log_prob_pos = (intra_mask * log_prob * weight).sum(1) / intra_mask.sum(1)
            icl_loss += -mean_log_prob_pos.mean()

        intra_logits = []
        intra_logits.append(torch.div(torch.mm(embeddings_a, embeddings_a.T), self.args.tau))
        intra_logits.append(torch.div(torch.mm(embeddings_b, embeddings_b.T), self.args.tau))

        soft_vcl_loss = 0.0
        soft_vcl_loss += self.kl(intra_logits[0], intra_logits[1].detach(), weight)
        soft_vcl_loss += self.kl(intra_logits[1], intra_logits[0].detach(), weight)

        vcl_loss = 0.0
        for logit in intra_logits:
            log_prob = logit - torch.log((torch.exp(logit) * diag_mask).sum(1, keepdim=True))
            mean_log_prob_pos = (intra_mask * log_prob * weight).sum(1) / intra_mask.sum(1)
            vcl_loss += -mean_log_prob_pos.mean()

        return vcl_loss, soft_vcl_loss, icl_loss, soft_icl_loss


class Sup_MCL_Loss_Meta(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.embed_list = nn.ModuleList([])
        self.args = args
        for i in range(args.number_net):
            sub_embed_list = nn.ModuleList([])
            for _ in range(args.number_stage):
                sub_embed_list.append(Embed(args.rep_dim[i], args.feat_dim))
            self.embed_list.append(sub_embed_list)
        self.contrast = SupMCL(args)

    def forward(self, embeddings, labels, weights):
        embeddings = [list(e) for e in embeddings]  # the code overwrites its input list in place
        for i in range(self.args.number_net):
            for j in range(self.args.number_stage):
                embeddings[i][j] = self.embed_list[i][j](embeddings[i][j])

        vcl_loss_all = soft_vcl_loss_all = icl_loss_all = soft_icl_loss_all = 0.0
        count = 0
        for i in range(self.args.number_net):
            for j in range(self.args.number_net):
                if i == j:
                    continue
                for k in range(len(embeddings[i])):
                    for z in range(len(embeddings[j])):
                        weight = weights[count].unsqueeze(-1)
                        vcl_loss, soft_vcl_loss, icl_loss, soft_icl_loss = self.contrast(
                            embeddings[i][k], embeddings[j][z], labels, weight
                        )
                        count += 1
                        vcl_loss_all += vcl_loss
                        soft_vcl_loss_all += soft_vcl_loss
                        icl_loss_all += icl_loss
                        soft_icl_loss_all += soft_icl_loss
        return vcl_loss_all, soft_vcl_loss_all, icl_loss_all, soft_icl_loss_all


class Embed(nn.Module):
    def __init__(self, dim_in=1024, dim_out=128):
        super().__init__()
        self.proj_head = nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU(inplace=True), nn.Linear(dim_out, dim_out))

    def forward(self, x):
        x = self.proj_head(x)
        return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))  # Normalize(2)


class KLDiv(nn.Module):
    def __init__(self, T):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t, weights=None):
        log_p_s = F.log_softmax(y_s / self.T, dim=1)
        log_p_t = F.log_softmax(y_t / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        input_size = p_t.size(0)
        if weights is not None:
            return (self.T**2) * (weights * p_t * (log_p_t - log_p_s)).sum() / input_size
        return F.kl_div(log_p_s, p_t, reduction="batchmean") * (self.T**2)


DistillKL = KLDiv  # utils.py's DistillKL: the unweighted branch


class LossWeightNetwork(nn.Module):
    def __init__(self, number_features):
        super().__init__()
        self.proj = nn.ModuleList([])
        self.number_net = len(number_features)
        for i in range(self.number_net):
            sub_proj = nn.ModuleList([])
            for j in range(len(number_features[i])):
                sub_proj.append(nn.Linear(number_features[i][j], 128))
            self.proj.append(sub_proj)

    def similarity(self, f_a, f_b):
        f_a = F.normalize(f_a, dim=1)
        f_b = F.normalize(f_b, dim=1)
        return torch.sigmoid((f_a * f_b).sum(dim=1))

    def forward(self, features):
        projected_feats = []
        for i in range(self.number_net):
            projected_feats.append([self.proj[i][j](features[i][j]) for j in range(len(features[i]))])
        weights = []
        for i in range(self.number_net):
            for j in range(self.number_net):
                if i == j:
                    continue
                for k in range(len(projected_feats[i])):
                    for z in range(len(projected_feats[j])):
                        weights.append(self.similarity(projected_feats[i][k], projected_feats[j][z]))
        return weights


class Aggregator(nn.Module):
    def __init__(self, dim_in, number_stage, number_net):
        super().__init__()
        self.number_stage = number_stage
        self.number_net = number_net
        for i in range(self.number_net):
            setattr(
                self,
                "proj_head_" + str(i),
                nn.Sequential(
                    nn.Linear(number_stage * dim_in[i], dim_in[i]),
                    nn.ReLU(inplace=True),
                    nn.Linear(dim_in[i], number_stage),
                ),
            )

    def forward(self, embeddings, logits):
        aggregated_logits = []
        for i in range(self.number_net):
            feature = torch.cat(embeddings[i], dim=1)
            weights = F.softmax(getattr(self, "proj_head_" + str(i))(feature), dim=1)
            weighted_logit = 0.0
            for j in range(self.number_stage):
                weighted_logit += logits[i][j] * weights[:, j].unsqueeze(-1)
            aggregated_logits.append(weighted_logit)
        return aggregated_logits


class MetaSGD(optim.SGD):
    def __init__(self, params, modules, lr=0.1, momentum=0, weight_decay=0, rollback=False):
        super().__init__(params, lr, momentum=momentum, weight_decay=weight_decay)
        self.prev_states = []
        self.modules = [*modules, self]
        self.rollback = rollback

    def parameters(self):
        for pg in self.param_groups:
            yield from pg["params"]

    def get_state(self):
        return copy.deepcopy([m.state_dict() for m in self.modules])

    def set_state(self, state):
        for m, s in zip(self.modules, state, strict=True):
            m.load_state_dict(s)

    def step(self, objective, *args, **kwargs):
        if objective is not None:
            self.prev_states.append((self.get_state(), objective, args, kwargs))
            loss = objective(*args, **kwargs)
            loss.backward()
        super().step()

    def meta_backward(self):
        alpha_groups = []
        for pg in self.param_groups:
            alpha_groups.append([])
            for p in pg["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p.data)
                grad = p.grad.data.clone()
                alpha_groups[-1].append((grad, torch.zeros_like(grad)))

        for prev_state in reversed(self.prev_states):
            state, objective, args, kwargs = prev_state
            self.set_state(state)
            loss = objective(*args, **kwargs)
            grad = torch.autograd.grad(loss, list(self.parameters()), create_graph=True, allow_unused=True)
            grad = dict(zip(self.parameters(), grad, strict=True))
            X = 0.0
            for pg, ag in zip(self.param_groups, alpha_groups, strict=True):
                lr = pg["lr"]
                for p, a in zip(pg["params"], ag, strict=True):
                    g = grad[p]
                    if g is not None:
                        X = X + g.mul(a[0].mul(-lr) + a[1]).sum()
            self.zero_grad(set_to_none=False)
            X.backward()
            for pg, ag in zip(self.param_groups, alpha_groups, strict=True):
                lr, wd, momentum = pg["lr"], pg["weight_decay"], pg["momentum"]
                for p, a in zip(pg["params"], ag, strict=True):
                    a_new = (
                        a[0].mul(1 - lr * wd).add_(a[1]).add_(p.grad.data),
                        a[1].mul(momentum).add_(a[0], alpha=-lr * momentum),
                    )
                    a[0].copy_(a_new[0])
                    a[1].copy_(a_new[1])
        self.prev_states = []


class Net(nn.Module):
    """The code's multi-network model for ffl's LMCL ``method``: ``(embeddings, logits)``, each a list
    per network of its exits' pooled features and logits (its modules are the method's)."""

    def __init__(self, method):
        super().__init__()
        self.net, self.aux = method.net, method.aux
        self.method = [method]

    def forward(self, x):
        return self.method[0].exits(x)


def build(method, lr: float, weight_decay: float):
    """The code's modules and optimisers around ``method``'s weights (copied, so that the method's
    own are untouched): net, criterion_mcl, aggregator, LossWeightNetwork, meta and weight optimisers."""
    s = method.settings
    n = method.num_subnets
    channels = list(method.net.out_channels)
    args = SimpleNamespace(
        number_net=n, number_stage=3, feat_dim=s.embed_dim, tau=s.contrast_temperature, kd_T=s.temperature,
        alpha=s.vcl_weight, gamma=s.soft_vcl_weight, beta=s.icl_weight, lam=s.soft_icl_weight,
        rep_dim=channels, times=s.meta_steps, meta_freq=s.meta_every,
    )  # fmt: skip
    net = Net(method)
    criterion_mcl = Sup_MCL_Loss_Meta(args)
    for theirs, mine in zip(criterion_mcl.embed_list, method.embeds, strict=True):
        for t, m in zip(theirs, mine, strict=True):
            t.proj_head.load_state_dict(m.proj_head.state_dict())
    weight_net = LossWeightNetwork([[c] * 3 for c in channels])
    weight_net.load_state_dict(method.pair_weights.state_dict())
    aggregator = Aggregator(channels, 3, n)
    for i, head in enumerate(method.aggregator.heads):
        getattr(aggregator, f"proj_head_{i}").load_state_dict(head.state_dict())
    meta_optimizer = MetaSGD(
        list(net.parameters()) + list(criterion_mcl.parameters()), [net, criterion_mcl],
        lr=lr, momentum=0.9, weight_decay=weight_decay, rollback=True,
    )  # fmt: skip
    weight_optimizer = optim.SGD(weight_net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    return SimpleNamespace(
        args=args, net=net, criterion_mcl=criterion_mcl, weight_net=weight_net, aggregator=aggregator,
        meta_optimizer=meta_optimizer, weight_optimizer=weight_optimizer,
    )  # fmt: skip


def train_loss(ref, inputs, targets) -> dict:
    """The loss of one batch of train(), its parts by name."""
    args = ref.args
    criterion_ce = nn.CrossEntropyLoss()
    criterion_div = DistillKL(args.kd_T)
    embeddings, logits = ref.net(inputs)
    with torch.no_grad():
        weights = ref.weight_net(embeddings)
    loss_cls = torch.tensor(0.0)
    loss_logit_kd = torch.tensor(0.0)
    for i in range(len(logits)):
        for j in range(args.number_stage):
            loss_cls = loss_cls + criterion_ce(logits[i][j], targets)
    aggregated_logits = ref.aggregator(embeddings, logits)
    for i in range(len(logits)):
        loss_cls = loss_cls + criterion_ce(aggregated_logits[i], targets)
    for i in range(len(logits)):
        for j in range(len(logits)):
            loss_logit_kd = loss_logit_kd + criterion_div(logits[i][-1], aggregated_logits[j].detach())
    loss_vcl, loss_soft_vcl, loss_icl, loss_soft_icl = ref.criterion_mcl(embeddings, targets, weights)
    loss_mcl = args.alpha * loss_vcl + args.gamma * loss_soft_vcl + args.beta * loss_icl + args.lam * loss_soft_icl
    return {
        "loss": loss_cls + loss_logit_kd + loss_mcl,
        "cls": loss_cls,
        "logit_kd": loss_logit_kd,
        "vcl": args.alpha * loss_vcl,
        "soft_vcl": args.gamma * loss_soft_vcl,
        "icl": args.beta * loss_icl,
        "soft_icl": args.lam * loss_soft_icl,
    }


def meta_step(ref, inputs, targets) -> None:
    """The meta-optimisation of train() (``if batch_idx % args.meta_freq == 0``), its objectives
    as main_layer_mcl_cifar_meta.py defines them."""
    args = ref.args

    def inner_objective(data):
        embeddings, _ = ref.net(data[0])
        weights = ref.weight_net(embeddings)
        loss_vcl, loss_soft_vcl, loss_icl, loss_soft_icl = ref.criterion_mcl(embeddings, data[1], weights)
        return args.alpha * loss_vcl + args.gamma * loss_soft_vcl + args.beta * loss_icl + args.lam * loss_soft_icl

    def outer_objective(data):
        _, logits = ref.net(data[0])
        loss_cls = torch.tensor(0.0)
        for i in range(len(logits)):
            for j in range(args.number_stage):
                loss_cls = loss_cls + F.cross_entropy(logits[i][j], data[1])
        return loss_cls

    data = (inputs, targets)
    for _ in range(args.times):
        ref.meta_optimizer.zero_grad(set_to_none=False)
        ref.meta_optimizer.step(inner_objective, data)
    ref.meta_optimizer.zero_grad(set_to_none=False)
    ref.meta_optimizer.step(outer_objective, data)
    ref.meta_optimizer.zero_grad(set_to_none=False)
    ref.weight_optimizer.zero_grad(set_to_none=False)
    outer_objective(data).backward()
    ref.meta_optimizer.meta_backward()
    ref.weight_optimizer.step()
