"""Measure before building: K runs of one table row (its seeds) trained as one model (issue #25).

A reproduction trains each row over several seeds: the same network K times, each run on its own
data order and augmentation. On a large GPU one CIFAR run leaves most of the chip idle (a
ResNet-32 step is ~800 kernels of a few microseconds, docs/benchmarks.md), and separate runs on
one GPU only take turns (benchmarks/packing.py). Stacking the K runs into one model makes every
kernel do K runs' work. Three ways, each timed as the aggregate images/s of K runs:

- ``separate``: K ordinary runs (the project's default step: the whole-step CUDA graph on a GPU),
  stepped in turn in one process, each with its own loader;
- ``vmap``: the K runs' parameters and buffers stacked (``torch.func.stack_module_state``) and the
  method's own forward and loss vectorised over them (``torch.func.vmap``), which turns each
  convolution into one grouped convolution; any method, unchanged;
- ``grouped``: the layers themselves stacked (``ffl.stacked.stack_modules``): a K-run convolution is
  a grouped convolution over channels laid out run by run, batch norm and heads K times wider, so
  activations never change layout (the fusion module's concatenation is made run by run); a bare
  step of forward, per-run losses, backward and SGD;
- ``stacked``: the same layers trained by the project's engine (``ffl.stacked.StackedTrainer``: the
  step ``ffl reproduce`` runs with ``reproduce.stack_seeds``, its per-run statistics included).

On a GPU every variant is captured as one whole-step CUDA graph (``ffl.step_graph``); with
``--compile`` the separate runs and the engine's stacked step also compile (torch.compile default
inside the graph, the paper presets' setting).
``--check`` first verifies, on tiny shapes, that one stacked step gives every run the gradients
and batch-norm statistics it gets alone (so the timings are of the right computation).

``python benchmarks/stacked_runs.py --device cuda --ks 1 2 4 --json stacked.json``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffl.bench import machine, random_loader
from ffl.engine import TrainConfig, Trainer
from ffl.methods import method_class
from ffl.precision import autocast, resolve_precision
from ffl.reference_loop import sync
from ffl.stacked import StackedBatches, StackedRuns, StackedTrainer, stack_modules
from ffl.step_graph import StepGraph

# -- the K-run steps ------------------------------------------------------------------------------


class Holder(nn.Module):
    """Stacked tensors as a module, so the step graph can snapshot and restore them."""

    def __init__(self, params: dict, buffers: dict):
        super().__init__()
        self.p = nn.ParameterDict({n.replace(".", "/"): nn.Parameter(v.detach()) for n, v in params.items()})
        for n, v in buffers.items():
            self.register_buffer(n.replace(".", "/"), v)

    def params(self) -> dict:
        return {n.replace("/", "."): v for n, v in self.p.items()}

    def buffer_dict(self) -> dict:
        return {n.replace("/", "."): v for n, v in self.named_buffers()}


def groups_of(method: nn.Module, names: dict, weight_decay: float) -> list[dict]:
    """The method's own optimiser groups, for tensors stacked under the same parameter names."""
    by_id = {id(p): n for n, p in method.named_parameters()}
    return [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[by_id[id(p)]] for p in g["params"]]}
        for g in method.param_groups(weight_decay)
    ]


def vmap_step(methods, device, precision, epoch=100.0, weight_decay=1e-4):
    from torch.func import functional_call, stack_module_state, vmap

    base = copy.deepcopy(methods[0]).to("meta")
    params, buffers = stack_module_state(methods)
    holder = Holder(params, buffers).to(device)
    named = holder.params()
    opt = torch.optim.SGD(
        groups_of(methods[0], named, weight_decay), lr=0.1, momentum=0.9, nesterov=True, fused=device.type == "cuda"
    )
    epoch = torch.tensor(epoch, device=device)

    def one(p, b, x, y):
        with autocast(device, precision, cache=False):
            out = functional_call(base, (p, b), (x,))
        terms = base.loss(out, y, epoch)
        return torch.stack(list(terms.values())).sum()

    batched = vmap(one, randomness="different")

    def step(x, y):  # x: (K, B, 3, H, W), y: (K, B)
        loss = batched(holder.params(), holder.buffer_dict(), x, y).sum()
        loss.backward()
        opt.step()
        return loss.detach()

    return step, holder, opt


def grouped_step(methods, device, precision, epoch=100.0, weight_decay=1e-4):
    k = len(methods)
    model = stack_modules(methods).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.param_groups(weight_decay), lr=0.1, momentum=0.9, nesterov=True, fused=device.type == "cuda"
    )
    epoch = torch.tensor(epoch, device=device)

    def step(x, y):  # x: (B, K*3, H, W) run by run, y: (K, B)
        with autocast(device, precision, cache=False):
            out = model(x)
        runs = [{n: z.unflatten(1, (k, -1))[:, i] for n, z in out.items()} for i in range(k)]
        loss = sum(torch.stack(list(model.loss(o, y[i], epoch).values())).sum() for i, o in enumerate(runs))
        loss.backward()
        opt.step()
        return loss.detach()

    return step, model, opt


# -- the check: one stacked step = each run's own step ---------------------------------------------


def check(method_name: str) -> None:
    torch.manual_seed(0)
    k, b = 3, 6
    cls = method_class(method_name)
    methods = [cls(["resnet8"] * cls.default_subnets, 10) for _ in range(k)]
    x = torch.randn(k, b, 3, 32, 32)
    y = torch.randint(0, 10, (k, b))
    epoch = 5.0
    alone = copy.deepcopy(methods)
    for i, m in enumerate(alone):
        torch.stack(list(m.loss(m(x[i]), y[i], torch.tensor(epoch)).values())).sum().backward()

    def compare(label, grads, bufs):
        for i, m in enumerate(alone):
            for n, p in m.named_parameters():
                g = grads[n].chunk(k)[i].reshape(p.shape)
                torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5, msg=f"{label}: run {i} grad {n}")
            for n, v in m.named_buffers():
                if n.endswith("running_mean") or n.endswith("running_var"):
                    torch.testing.assert_close(
                        bufs[n].chunk(k)[i].reshape(v.shape), v, rtol=1e-5, atol=1e-6, msg=f"{label}: {n}"
                    )
        print(f"check {method_name} {label}: every run's gradients and statistics match its own step", flush=True)

    cpu = torch.device("cpu")
    step, holder, opt = vmap_step(copy.deepcopy(methods), cpu, "fp32", epoch)
    opt.step = lambda: None  # the gradients, before any update
    step(x, y)
    compare("vmap", {n: p.grad for n, p in holder.params().items()}, holder.buffer_dict())
    if method_name in GROUPED:
        step, model, opt = grouped_step(copy.deepcopy(methods), cpu, "fp32", epoch)
        opt.step = lambda: None
        step(torch.cat(list(x), 1).contiguous(memory_format=torch.channels_last), y)
        compare("grouped", {n: p.grad for n, p in model.named_parameters()}, dict(model.named_buffers()))


GROUPED = ("ffl", "vanilla", "dualnet", "kdcl")

# -- timing ---------------------------------------------------------------------------------------


def loaders(k, n_batches, batch_size, device, channels_last=True):
    return [random_loader(n_batches, batch_size, 100, device, i, True, channels_last) for i in range(k)]


def timed_separate(method_name, archs, k, batch_size, device, steps, precision, compile=None) -> float:
    trainers = []
    cls = method_class(method_name)
    for i, data in enumerate(loaders(k, steps, batch_size, device)):
        torch.manual_seed(i)
        cfg = TrainConfig(
            epochs=10, milestones=[], precision=precision, cuda_graph=device.type == "cuda", compile=compile
        )
        t = Trainer(cls(archs, 100), data, cfg)
        t.train_loader = loaders(1, 5, batch_size, device)[0]
        t.train_epoch(100)  # warm-up and capture
        t.train_loader = data
        trainers.append(t)
    sync(device)
    t0 = time.perf_counter()
    for t in trainers:
        t.train_epoch(100)
    sync(device)
    return k * steps * batch_size / (time.perf_counter() - t0)


def timed_engine(method_name, archs, k, batch_size, device, steps, precision, compile=None) -> float:
    """The engine's stacked step (what `ffl reproduce` trains a row's seeds with)."""
    cls = method_class(method_name)
    methods = []
    for i in range(k):
        torch.manual_seed(i)
        methods.append(cls(archs, 100))
    cfg = TrainConfig(epochs=10, milestones=[], precision=precision, cuda_graph=device.type == "cuda", compile=compile)
    trainer = StackedTrainer(StackedRuns(methods), StackedBatches(loaders(k, 5, batch_size, device)), cfg)
    trainer.train_epoch(100)  # warm-up, capture, compilation
    trainer.train_loader = StackedBatches(loaders(k, steps, batch_size, device))
    sync(device)
    t0 = time.perf_counter()
    trainer.train_epoch(100)
    sync(device)
    return k * steps * batch_size / (time.perf_counter() - t0)


def timed_stacked(variant, method_name, archs, k, batch_size, device, steps, precision) -> float:
    cls = method_class(method_name)
    torch.manual_seed(0)
    methods = [cls(archs, 100).to(device) for _ in range(k)]
    build = vmap_step if variant == "vmap" else grouped_step
    step, module, opt = build(methods, device, precision)
    data = loaders(k, max(steps, 3), batch_size, device)

    def batch(iters):
        xs, ys = zip(*(next(it) for it in iters))
        if variant == "vmap":
            return torch.stack(xs), torch.stack(ys)
        return torch.cat(xs, 1).contiguous(memory_format=torch.channels_last), torch.stack(ys)

    run = StepGraph(lambda x, y: step(x, y), module, opt) if device.type == "cuda" else None

    def one_step(x, y):
        if run is not None:
            return run(x, y)
        opt.zero_grad(set_to_none=True)
        return step(x, y)

    for d in data:
        d.set_epoch(0)
    iters = [iter(d) for d in data]
    for _ in range(3):  # warm-up and capture
        one_step(*batch(iters))
    for d in data:
        d.set_epoch(1)
    iters = [iter(d) for d in data]
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step(*batch(iters))
    sync(device)
    return k * steps * batch_size / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--method", default="ffl", help="the row's method (grouped: ffl or vanilla)")
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4], help="runs trained together")
    p.add_argument("--batch-size", type=int, default=128, help="each run's batch")
    p.add_argument("--steps", type=int, help="timed steps (default: 100 on a GPU, 3 on a CPU)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--variants", nargs="+", default=["separate", "vmap", "grouped", "stacked"])
    p.add_argument("--compile", help="torch.compile mode of the separate runs' and the engine's stacked step")
    p.add_argument("--check", action="store_true", help="first check the stacked steps against separate ones")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    if args.check:
        check(args.method)
    steps = args.steps or (100 if device.type == "cuda" else 3)
    precision = resolve_precision(args.precision, device)
    cls = method_class(args.method)
    archs = [args.arch] * cls.default_subnets
    variants = [v for v in args.variants if v not in ("grouped", "stacked") or args.method in GROUPED]
    out = {"machine": machine(device), "method": args.method, "archs": archs, "batch_size": args.batch_size,
           "precision": precision, "compile": args.compile, "rows": []}  # fmt: skip
    print(f"# K runs as one model on {out['machine']}: {args.method} {'+'.join(archs)}, batch {args.batch_size} "
          f"per run, {precision}, compile {args.compile}\n")  # fmt: skip
    print("| K | variant | aggregate images/s | vs K separate runs |\n|---|---|---|---|", flush=True)
    for k in args.ks:
        base = None
        for variant in variants:
            try:
                if variant == "separate":
                    rate = timed_separate(
                        args.method, archs, k, args.batch_size, device, steps, precision, args.compile
                    )
                elif variant == "stacked":
                    rate = timed_engine(args.method, archs, k, args.batch_size, device, steps, precision, args.compile)
                else:
                    rate = timed_stacked(variant, args.method, archs, k, args.batch_size, device, steps, precision)
            except Exception as e:  # a variant that cannot run is a result too
                out["rows"].append({"k": k, "variant": variant, "error": f"{type(e).__name__}: {e}"[:300]})
                print(f"| {k} | {variant} | failed: {type(e).__name__}: {str(e)[:120]} | |", flush=True)
                continue
            base = rate if variant == "separate" else base
            ratio = f"{rate / base:.2f}x" if base else ""
            out["rows"].append({"k": k, "variant": variant, "images_per_s": round(rate), "vs_separate": ratio})
            print(f"| {k} | {variant} | {rate:.0f} | {ratio} |", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
