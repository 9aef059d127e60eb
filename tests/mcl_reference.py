"""A port of MCL's loss and training step from the authors' code (winycg/MCL at 236da2f:
losses/cifar_sup_mcl_loss.py, utils.py DistillKL, main_cifar.py train()), kept as close to it as
runs on a CPU: ``.cuda()`` dropped, ``args`` a namespace. The fidelity tests hold ffl's MCL to it.
"""

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class SupMCL(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.number_net = args.number_net
        self.feat_dim = args.feat_dim
        self.args = args
        self.kl = KLDiv(T=args.kd_T)

    def forward(self, embeddings, labels):
        labels = labels.unsqueeze(0)
        intra_mask = torch.eq(labels, labels.T).float() - torch.eye(labels.size(1))
        diag_mask = 1.0 - torch.eye(labels.size(1))

        inter_logits = []
        soft_icl_loss = 0.0
        for i in range(self.number_net):
            for j in range(i + 1, self.number_net):
                cos_simi_ij = torch.div(torch.mm(embeddings[i], embeddings[j].T), self.args.tau)
                inter_logits.append(cos_simi_ij)
                cos_simi_ji = torch.div(torch.mm(embeddings[j], embeddings[i].T), self.args.tau)
                inter_logits.append(cos_simi_ji)
                soft_icl_loss += self.kl(cos_simi_ij, cos_simi_ji.detach())
                soft_icl_loss += self.kl(cos_simi_ji, cos_simi_ij.detach())

        icl_loss = 0.0
        for logit in inter_logits:
            log_prob = logit - torch.log((torch.exp(logit) * diag_mask).sum(1, keepdim=True))
            mean_log_prob_pos = (intra_mask * log_prob).sum(1) / intra_mask.sum(1)
            icl_loss += -mean_log_prob_pos.mean()

        intra_logits = []
        for i in range(self.number_net):
            cos_simi = torch.div(torch.mm(embeddings[i], embeddings[i].T), self.args.tau)
            intra_logits.append(cos_simi)

        soft_vcl_loss = 0.0
        for i in range(self.number_net):
            for j in range(self.number_net):
                if i != j:
                    soft_vcl_loss += self.kl(intra_logits[i], intra_logits[j].detach())

        vcl_loss = 0.0
        for logit in intra_logits:
            log_prob = logit - torch.log((torch.exp(logit) * diag_mask).sum(1, keepdim=True))
            mean_log_prob_pos = (intra_mask * log_prob).sum(1) / intra_mask.sum(1)
            vcl_loss += -mean_log_prob_pos.mean()

        return vcl_loss, soft_vcl_loss, icl_loss, soft_icl_loss


class Sup_MCL_Loss(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.embed_list = nn.ModuleList([])
        self.args = args
        for i in range(args.number_net):
            self.embed_list.append(Embed(args.rep_dim[i], args.feat_dim))
        self.contrast = SupMCL(args)

    def forward(self, embeddings, labels):
        for i in range(self.args.number_net):
            embeddings[i] = self.embed_list[i](embeddings[i])
        return self.contrast(embeddings, labels)


class Embed(nn.Module):
    def __init__(self, dim_in=1024, dim_out=128):
        super().__init__()
        self.proj_head = nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU(inplace=True), nn.Linear(dim_out, dim_out))
        self.l2norm = Normalize(2)

    def forward(self, x):
        return self.l2norm(self.proj_head(x))


class Normalize(nn.Module):
    def __init__(self, power=2):
        super().__init__()
        self.power = power

    def forward(self, x):
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1.0 / self.power)
        return x.div(norm)


class KLDiv(nn.Module):
    def __init__(self, T):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t):
        p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(p_s, p_t, reduction="batchmean") * (self.T**2)


DistillKL = KLDiv  # utils.py's DistillKL is the same computation


def args_for(method) -> SimpleNamespace:
    """The authors' args for ffl's MCL ``method`` (its settings under the code's names)."""
    s = method.settings
    return SimpleNamespace(
        number_net=method.num_subnets,
        feat_dim=s.embed_dim,
        tau=s.contrast_temperature,
        kd_T=s.temperature,
        alpha=s.vcl_weight,
        gamma=s.soft_vcl_weight,
        beta=s.icl_weight,
        lam=s.soft_icl_weight,
        logit_distill=s.logit_kd,
        rep_dim=list(method.net.out_channels),
    )


def train_loss(net_forward, criterion_mcl: Sup_MCL_Loss, args, inputs, targets) -> dict:
    """The loss of main_cifar.py train() for one batch, its parts by name. ``net_forward(inputs)``
    returns (logits, embeddings) as the code's multi-network models do."""
    criterion_ce = nn.CrossEntropyLoss()
    criterion_div = DistillKL(args.kd_T)
    logits, embeddings = net_forward(inputs)

    loss_cls = torch.tensor(0.0)
    loss_logit_kd = torch.tensor(0.0)
    for i in range(len(logits)):
        loss_cls = loss_cls + criterion_ce(logits[i], targets)

    ensemble_logits = 0.0
    for i in range(len(logits)):
        ensemble_logits = ensemble_logits + logits[i]
    ensemble_logits = ensemble_logits / (len(logits))
    ensemble_logits = ensemble_logits.detach()

    if args.logit_distill:
        if args.number_net == 2:
            loss_logit_kd = loss_logit_kd + criterion_div(logits[0], ensemble_logits)
            loss_logit_kd = loss_logit_kd + criterion_div(logits[1], ensemble_logits)
        else:
            loss_logit_kd = loss_logit_kd + criterion_div(logits[-1], ensemble_logits)

    loss_vcl, loss_soft_vcl, loss_icl, loss_soft_icl = criterion_mcl(embeddings, targets)
    loss_mcl = args.alpha * loss_vcl + args.gamma * loss_soft_vcl + args.beta * loss_icl + args.lam * loss_soft_icl
    loss = loss_cls + loss_logit_kd + loss_mcl
    return {
        "loss": loss,
        "cls": loss_cls,
        "logit_kd": loss_logit_kd,
        "vcl": args.alpha * loss_vcl,
        "soft_vcl": args.gamma * loss_soft_vcl,
        "icl": args.beta * loss_icl,
        "soft_icl": args.lam * loss_soft_icl,
    }
