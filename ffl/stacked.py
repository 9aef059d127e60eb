"""K runs of one method (a table row's seeds) trained as one model: every layer holds the K runs'
layers side by side, so each kernel does K runs' work.

A ResNet-32 step leaves a large GPU idle inside every kernel (docs/benchmarks.md): on an H200, four
FFL runs stacked this way train at 2.1x the images/s of four separate runs. The runs stay
independent: a K-run convolution is a grouped convolution (K groups over channels laid out run by
run), batch norm and the classifier heads are K times wider, and each run's gradient comes from
its own loss only, so each run follows the trajectory it follows alone (up to the order of float
sums inside the kernels). ``unstack`` gives every run back as an ordinary method.

Each run has its own initialisation, data order and augmentation: a run's input channels are its
own batch (``StackedBatches``), its targets its own labels. Evaluation gives every run the same
images (``StackedEval``).

Which methods stack is declared by each method (``Method.stackable``): those whose forward
combines sub-networks only element-wise or through the fusion module (whose concatenation is made
run by run here), and whose step is one forward and one update.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ffl.engine import Trainer
from ffl.fusion import FusionModule
from ffl.metrics import topk_correct


class StackedLinear(nn.Module):
    """K linear layers over features laid out run by run: (B, K*in) -> (B, K*out), in fp32 as the
    project's heads are."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.k = len(layers)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))  # (K, out, in)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))  # (K, out)

    def forward(self, x):
        x = x.float().unflatten(1, (self.k, -1))
        return (torch.einsum("bki,koi->bko", x, self.weight) + self.bias).flatten(1)


def _stacked_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c, k = convs[0], len(convs)
    out = nn.Conv2d(
        c.in_channels * k,
        c.out_channels * k,
        c.kernel_size,
        c.stride,
        c.padding,
        c.dilation,
        groups=c.groups * k,
        bias=c.bias is not None,
        padding_mode=c.padding_mode,
    )
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            out.bias.copy_(torch.cat([m.bias for m in convs]))
    return out


def _stacked_bn(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = bns[0]
    out = nn.BatchNorm2d(b.num_features * len(bns), b.eps, b.momentum, b.affine, b.track_running_stats)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(b, name) is not None:
                getattr(out, name).copy_(torch.cat([getattr(m, name) for m in bns]))
        if b.num_batches_tracked is not None:
            out.num_batches_tracked.copy_(b.num_batches_tracked)
    return out


def _stacked_fuse(k: int):
    def fuse(self, feature_maps):
        # Each map is (B, K*C_i, h, w), run by run; their concatenation must stay run by run.
        maps = [f.unflatten(1, (k, -1)) for f in feature_maps]
        return self.pointwise(self.depthwise(torch.cat(maps, 2).flatten(1, 2)))

    return fuse


LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def stack_modules(models: list[nn.Module]) -> nn.Module:
    """One module computing K models of one structure side by side: input channels, every feature
    map and the logits laid out run by run ((B, K*C)). Convolutions, 2-d batch norm, linear layers
    and the fusion module are stacked; every other layer must act element-wise or per channel."""
    k = len(models)
    out = copy.deepcopy(models[0])
    sources = [dict(m.named_modules()) for m in models]
    for name, module in list(out.named_modules()):
        parts = [s[name] for s in sources]
        if isinstance(module, nn.Conv2d):
            new = _stacked_conv(parts)
        elif isinstance(module, nn.BatchNorm2d):
            new = _stacked_bn(parts)
        elif isinstance(module, nn.Linear):
            new = StackedLinear(parts)
        else:
            if isinstance(module, FusionModule):
                module.fuse = _stacked_fuse(k).__get__(module)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) or (
                not isinstance(module, LAYERS) and any(p.dim() > 0 for p in module.parameters(recurse=False))
            ):
                raise ValueError(f"{name} ({type(module).__name__}) cannot be stacked run by run")
            continue
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, new)
    return out


def stack_refusal(method_cls, settings) -> str | None:
    """Why runs of this method cannot be stacked, or None."""
    if not method_cls.stackable:
        return f"{method_cls.name} {method_cls.not_stackable}"
    if method_cls.has_own_step(settings):
        return f"{method_cls.name}'s step updates the networks several times per batch (its one-update step stacks)"
    return None


class StackedRuns(nn.Module):
    """K runs of one method as one model, keeping the engine's method contract: outputs, loss terms
    and correct counts are named ``<run>/<name>``; targets are (B, K), one column per run."""

    name = "stacked"
    static_step = True

    def __init__(self, methods: list[nn.Module]):
        super().__init__()
        cls = type(methods[0])
        if any(type(m) is not cls or m.spec() != methods[0].spec() for m in methods):
            raise ValueError("stacked runs must be one method with the same networks and settings")
        reason = stack_refusal(cls, methods[0].settings)
        if reason:
            raise ValueError(f"cannot stack runs: {reason}")
        self.k = len(methods)
        self.inner = stack_modules(methods)
        self.settings = self.inner.settings
        self.partial_updates = cls.partial_updates

    @property
    def num_subnets(self) -> int:
        return self.inner.num_subnets

    def train_views(self, n, settings):
        return self.inner.train_views(n, settings)

    @staticmethod
    def has_own_step(settings) -> bool:
        return False

    own_step = False

    def spec(self) -> dict:
        return {"stacked": self.k, **self.inner.spec()}

    def param_groups(self, weight_decay):
        return self.inner.param_groups(weight_decay)

    def set_epoch(self, epoch, epochs):
        self.inner.set_epoch(epoch, epochs)

    def after_step(self):
        self.inner.after_step()

    def step_phase(self):
        return self.inner.step_phase()

    def end_step(self):
        self.inner.end_step()

    def run_outputs(self, outputs: dict) -> list[dict]:
        """The (B, K*C) outputs of the stacked model as K runs' output dicts."""
        return [{n: z.unflatten(1, (self.k, -1))[:, i] for n, z in outputs.items()} for i in range(self.k)]

    def forward(self, images):
        return {
            (f"_{i}/{n[1:]}" if n[0] == "_" else f"{i}/{n}"): z
            for i, out in enumerate(self.run_outputs(self.inner(images)))
            for n, z in out.items()
        }

    def split(self, outputs: dict) -> list[dict]:
        runs: list[dict] = [{} for _ in range(self.k)]
        for name, z in outputs.items():
            hidden = name[0] == "_"
            run, _, own = name.lstrip("_").partition("/")
            runs[int(run)]["_" + own if hidden else own] = z
        return runs

    def loss(self, outputs, targets, epoch):
        return {
            f"{i}/{term}": value
            for i, out in enumerate(self.split(outputs))
            for term, value in self.inner.loss(out, targets[:, i], epoch).items()
        }


def unstack(stacked: StackedRuns, methods: list[nn.Module]) -> list[nn.Module]:
    """Copies each run's weights, statistics and state out of the stacked model into ``methods``
    (the runs' own modules, as built): run i's tensors are the i-th of K equal parts of each
    stacked tensor's first dimension."""
    state = stacked.inner.state_dict()
    for i, method in enumerate(methods):
        own = method.state_dict()
        mine = {}
        for key, target in own.items():
            value = state[key]
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                value = value.chunk(stacked.k)[i].reshape(target.shape)
            mine[key] = value
        method.load_state_dict(mine)
    return methods


def run_history(history: list[dict], run: int) -> list[dict]:
    """One run's epochs out of a stacked training's: its own loss terms, total and errors, named as
    a run alone names them."""
    out = []
    for metrics in history:
        mine = {}
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) < 3 or not parts[2].isdigit():
                mine[key] = value  # the epoch's lr, number and time
            elif int(parts[2]) == run:
                mine["/".join(parts[:2] + parts[3:])] = value
        out.append(mine)
    return out


class StackedBatches:
    """K training loaders (one per run: its seed's order and augmentation) as one: each batch's
    images concatenated on channels, run by run, the targets (B, K)."""

    def __init__(self, loaders: list):
        sizes = {(len(lo), lo.batch_size, lo.views) for lo in loaders}
        if len(sizes) > 1:
            raise ValueError(f"the runs' loaders differ in length, batch size or views: {sorted(sizes)}")
        self.loaders = loaders
        first = loaders[0]
        self.device, self.channels_last, self.views = first.device, first.channels_last, first.views
        self.batch_size = first.batch_size

    def __len__(self) -> int:
        return len(self.loaders[0])

    def set_epoch(self, epoch: int) -> None:
        for lo in self.loaders:
            lo.set_epoch(epoch)

    def __iter__(self):
        for batches in zip(*self.loaders, strict=True):
            x = torch.cat([b[0] for b in batches], 1)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, torch.stack([b[1] for b in batches], 1)


class StackedEval:
    """One evaluation loader for K stacked runs: every run sees the same images."""

    def __init__(self, loader, k: int):
        self.loader, self.k = loader, k
        self.device, self.channels_last = loader.device, loader.channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.repeat(1, self.k, 1, 1)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


class StackedTrainer(Trainer):
    """The engine's loop over stacked runs: each run's correct counts against its own targets, each
    run's summed loss as its own curve."""

    @staticmethod
    def _totals(total, terms):
        runs: dict[str, list] = {}
        for name, value in terms.items():
            runs.setdefault(name.partition("/")[0], []).append(value)
        return {f"{run}/total": torch.stack(values).sum() for run, values in runs.items()}

    @staticmethod
    def _correct(outputs, y):
        return {
            name: topk_correct(z.detach(), y[:, int(name.partition("/")[0])], ks=(1,))[0]
            for name, z in outputs.items()
            if name[0] != "_"
        }
