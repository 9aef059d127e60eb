"""Training-step throughput: this project's FFL step against a faithful reference of the authors' recipe.

The reference is the authors' loop (ffl.reference_loop). Both sides train
the same model with the same loss, on CIFAR-shaped random data, timed after a warm-up with the
device synchronised. Runs without DVC, Ray or Typer: ``python -m ffl.bench --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from ffl.data import Augment, DeviceLoader
from ffl.data.cifar import CIFAR100_MEAN, CIFAR100_STD
from ffl.engine import TrainConfig, Trainer
from ffl.errors import SettingError, one_line
from ffl.methods import FFL, METHODS, method_class
from ffl.models import backbone_spec
from ffl.precision import resolve_precision
from ffl.reference_loop import Result, random_cifar, reference, sync
from ffl.step_mode import step_mode


def random_loader(
    n_batches, batch_size, num_classes, device, seed=0, shuffle=False, channels_last=True, views=1
) -> DeviceLoader:
    """``n_batches`` training batches of CIFAR-shaped random images, augmented on the device as the
    real loaders do (its order and augmentation seeded by ``seed``)."""
    return DeviceLoader(
        random_cifar(batch_size * n_batches, num_classes, seed),
        batch_size,
        CIFAR100_MEAN,
        CIFAR100_STD,
        device,
        augment=Augment(),
        shuffle=shuffle,
        drop_last=True,
        seed=seed,
        channels_last=channels_last,
        views=views,
    )


def step_label(mode, own_step: bool) -> str:
    """How the timed step ran, in the words docs/benchmarks.md uses."""
    label = "whole-step graph" if mode.cuda_graph else "eager"
    if mode.compile:
        label += f" + compile {mode.compile}"
    return label + (", peers in turn" if own_step else "")


def project(
    archs,
    num_classes,
    batch_size,
    device,
    steps,
    warmup,
    precision="auto",
    channels_last=True,
    compile=None,
    cuda_graph=None,
    concurrent_branches=False,
    label="project",
    method="ffl",
) -> Result:
    """Images/s of ``method``'s training step (its own default settings) as the engine runs it:
    the step mode ``ffl.step_mode`` chooses unless ``cuda_graph``/``compile`` say otherwise, the
    augmented views the method takes, its own updates per batch."""
    cls = method_class(method)
    torch.manual_seed(0)
    model = cls(list(archs), num_classes)
    model.net.concurrent_branches = concurrent_branches
    views = cls.train_views(len(archs), model.settings)

    def batches(n, seed=0, shuffle=False):
        return random_loader(n, batch_size, num_classes, device, seed, shuffle, channels_last, views)

    loader = batches(steps, shuffle=True)
    resolved = resolve_precision(precision, device)
    mode = step_mode(
        cls, model.settings, device.type, resolved, compile or "off", "auto" if cuda_graph is None else cuda_graph
    )
    config = TrainConfig(
        epochs=10, milestones=[], precision=precision, compile=mode.compile, cuda_graph=bool(mode.cuda_graph)
    )
    trainer = Trainer(model, loader, config)
    # Warm-up: one short epoch (compilation, cuDNN autotuning, allocator), timed for the compile cost.
    trainer.train_loader = batches(max(warmup, 1), seed=1)
    sync(device)
    t0 = time.perf_counter()
    trainer.train_epoch(100)
    sync(device)
    compile_s = time.perf_counter() - t0 if (mode.compile or mode.cuda_graph) else 0.0
    trainer.train_epoch(100)  # CUDA graphs record on the second call of a compiled function
    trainer.train_loader = loader
    t0 = time.perf_counter()
    trainer.train_epoch(100)  # ends with its one host sync
    sync(device)
    dt = time.perf_counter() - t0
    if label == "project" and method != "ffl":
        label = method
    return Result(label, steps * batch_size / dt, 1000 * dt / steps, compile_s, step_label(mode, model.own_step))


def methods_section(args, common, device) -> tuple[list, list[dict]]:
    """Every method's step at ``--arch``, each with its own default number of sub-networks and
    settings, as a table's row trains it."""
    rows, records = [], []
    names = list(METHODS) if args.methods == ["all"] else args.methods
    for name in names:
        cls = method_class(name)
        n = args.subnets_per_method or cls.default_subnets
        archs = [args.arch] * n
        variants = [(None, "")]
        if device.type == "cuda" and args.eager_too:
            variants.append((False, " (eager)"))
        for graph, suffix in variants:
            r = project(
                archs, batch_size=args.batch_size, precision=args.precision, method=name, cuda_graph=graph, **common
            )
            rows.append([name + suffix, n, r.step, f"{r.images_per_s:.0f}", f"{r.step_ms:.2f}"])
            records.append(
                {
                    "method": name,
                    "archs": archs,
                    "step": r.step,
                    "images_per_s": round(r.images_per_s),
                    "step_ms": round(r.step_ms, 3),
                    "default_path": graph is None,
                }
            )
            print(f"| {' | '.join(str(c) for c in rows[-1])} |", flush=True)
    return rows, records


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.type == "cuda":
        desc = f"{torch.cuda.get_device_name(device)}; " + desc
    return desc


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    archs = [args.arch] * args.subnets
    # A captured GPU step takes ~4 ms: 20 steps would time a window shorter than the clock's noise.
    steps = args.steps or (300 if device.type == "cuda" else 20)
    common = dict(num_classes=args.num_classes, device=device, steps=steps, warmup=args.warmup)
    out = {"machine": machine(device), "device": str(device), "sections": {}}
    print(f"# ffl bench on {out['machine']}\n")
    if args.methods:
        head = f"{args.arch}, {args.num_classes} classes, batch {args.batch_size}, precision {args.precision}"
        print(f"## Every method's training step, {head}\n")
        headers = ["method", "sub-networks", "step", "images/s", "ms/step"]
        print("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers), flush=True)
        rows, records = methods_section(args, common, device)
        out["sections"]["methods"] = rows
        out["methods"] = {
            "arch": args.arch,
            "num_classes": args.num_classes,
            "batch_size": args.batch_size,
            "precision": resolve_precision(args.precision, device),
            "torch": torch.__version__,
            "runs": records,
        }
        out["markdown"] = f"## Every method's training step, {head}\n\n" + table(headers, rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
        return out

    ref = reference(archs, batch_size=args.batch_size, workers=args.ref_workers, **common)
    default_label = "project (whole-step CUDA graph)" if device.type == "cuda" else "project"
    results = [ref, project(archs, batch_size=args.batch_size, precision=args.precision, label=default_label, **common)]
    if args.compile:
        results.append(
            project(
                archs,
                batch_size=args.batch_size,
                precision=args.precision,
                compile=args.compile,
                label=f"project + torch.compile({args.compile})",
                **common,
            )
        )
    if args.concurrent_branches:
        for compile in dict.fromkeys([None, args.compile]):
            results.append(
                project(
                    archs,
                    batch_size=args.batch_size,
                    precision=args.precision,
                    compile=compile,
                    concurrent_branches=True,
                    label="project + concurrent branches" + (f" + torch.compile({compile})" if compile else ""),
                    **common,
                )
            )
    best = max(results[1:], key=lambda r: r.images_per_s)
    rows = [
        [
            r.label + (f" (compile/capture {r.compile_s:.0f} s)" if r.compile_s else ""),
            f"{r.images_per_s:.0f}",
            f"{r.step_ms:.2f}",
            f"{r.images_per_s / ref.images_per_s:.2f}x",
        ]
        for r in results
    ]
    head = f"{args.arch} x{args.subnets}, {args.num_classes} classes, batch {args.batch_size}"
    md = [f"## Training step, {head}\n", table(["path", "images/s", "ms/step", "vs reference"], rows)]
    out["sections"]["step"] = rows
    epoch_images = 45_000  # CIFAR's training set less a 5,000-image validation split
    minutes = 300 * epoch_images / best.images_per_s / 60
    md.append(
        f"\nProjected 300-epoch run ({epoch_images} images/epoch) with {best.label}: {minutes:.1f} min "
        f"(reference: {300 * epoch_images / ref.images_per_s / 60:.1f} min), evaluation not included."
    )
    out["projected_300_epochs_min"] = minutes
    print("\n".join(md[-2:]) + "\n", flush=True)

    if args.ablate:
        ablation = []
        settings = [
            ("fp32, NCHW", dict(precision="fp32", channels_last=False, cuda_graph=False)),
            ("fp32, channels_last", dict(precision="fp32", channels_last=True, cuda_graph=False)),
            ("bf16, channels_last", dict(precision="bf16", channels_last=True, cuda_graph=False)),
        ]
        if device.type == "cuda":
            settings += [
                ("fp32, NCHW, whole-step graph", dict(precision="fp32", channels_last=False, cuda_graph=True)),
                ("bf16, channels_last, whole-step graph", dict(precision="bf16", channels_last=True, cuda_graph=True)),
            ]
        if args.compile:
            # Compiled variants of the fp32-NCHW and bf16 settings: inside the whole-step graph
            # where the mode allows it, eager otherwise.
            graphed = step_mode(FFL, FFL.Settings(), device.type, "bf16", args.compile).cuda_graph
            settings += [
                (f"{label}, compile {args.compile}", dict(kw, compile=args.compile))
                for label, kw in settings
                if kw["cuda_graph"] == graphed and not label.startswith("fp32, channels_last")
            ]
        for label, kw in settings:
            r = project(archs, batch_size=args.batch_size, label=label, **kw, **common)
            ablation.append([label, f"{r.images_per_s:.0f}", f"{r.images_per_s / ref.images_per_s:.2f}x"])
        md += [
            "\n### What each setting buys (project path)\n",
            table(["setting", "images/s", "vs reference"], ablation),
        ]
        out["sections"]["ablation"] = ablation
        print(md[-1] + "\n", flush=True)

    if args.scaling:
        sweeps = {
            "batch size": [(f"{b}", dict(archs=archs, batch_size=b)) for b in args.batch_sizes],
            "depth": [(a, dict(archs=[a] * args.subnets, batch_size=args.batch_size)) for a in args.depths],
            "sub-networks": [(f"{n}", dict(archs=[args.arch] * n, batch_size=args.batch_size)) for n in args.counts],
        }
        for name, points in sweeps.items():
            rows = []
            for label, kw in points:
                r = project(precision=args.precision, **kw, **common)
                rows.append([label, f"{r.images_per_s:.0f}", f"{r.step_ms:.1f}"])
            md += [f"\n### Scaling with {name} (project path)\n", table([name, "images/s", "ms/step"], rows)]
            out["sections"][name] = rows
            print(md[-1] + "\n", flush=True)
    out["markdown"] = "\n".join(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, except those whose default is "decided at run time"."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _arch(name: str) -> str:
    try:
        backbone_spec(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def _check(p: argparse.ArgumentParser, args) -> argparse.Namespace:
    """What a single argument's type cannot say: the device exists, the JSON file can be written
    (before minutes of timing, not after)."""
    try:
        torch.empty(1, device=torch.device(args.device))
    except (RuntimeError, AssertionError) as e:
        p.error(f"--device: {args.device} is not usable here ({one_line(e)})")
    if args.json:
        target = Path(args.json)
        if target.is_dir() or not os.access(target.parent if str(target.parent) else ".", os.W_OK):
            p.error(f"--json: cannot write {target}")
    return args


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as the other ffl commands say a mistake
        self.exit(2, f"error: {self.prog}: {message} (`{self.prog} --help` lists the options)\n")


def parser() -> argparse.ArgumentParser:
    p = _OneLineErrors(
        prog="ffl bench",
        description=__doc__.splitlines()[0],
        formatter_class=_DefaultsHelp,
    )
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to time (cpu, cuda, cuda:1)"
    )
    p.add_argument("--arch", type=_arch, default="resnet32", help="every sub-network's architecture")
    p.add_argument("--subnets", type=_at_least(2), default=2, help="number of FFL sub-networks")
    p.add_argument("--num-classes", type=_at_least(2), default=100, help="classifier width (CIFAR-100: 100)")
    p.add_argument("--batch-size", type=_at_least(1), default=128, help="training batch size (the paper's: 128)")
    p.add_argument(
        "--steps", type=_at_least(1), help="timed steps per measurement (default: 300 on a GPU, 20 on a CPU)"
    )
    p.add_argument("--warmup", type=_at_least(0), default=5, help="untimed steps before each measurement")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="the fast path's autocast (auto: bf16 where the device computes it natively); the reference is fp32",
    )
    p.add_argument(
        "--ref-workers", type=_at_least(0), default=4, help="the reference DataLoader's workers (authors: 4)"
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="reduce-overhead",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="also time torch.compile in this mode (compile time reported apart); default and "
        "max-autotune-no-cudagraphs run inside the whole-step graph, the others bring their own",
    )
    p.add_argument(
        "--concurrent-branches", action="store_true", help="also time each branch on its own CUDA stream (experimental)"
    )
    p.add_argument("--ablate", action="store_true", help="time precision and memory-format settings")
    p.add_argument("--scaling", action="store_true", help="images/s against batch size, depth, sub-networks")
    p.add_argument(
        "--batch-sizes", type=_at_least(1), nargs="+", default=[64, 128, 256, 512], help="--scaling: batch sizes"
    )
    depths = ["resnet20", "resnet32", "resnet56", "resnet110"]
    p.add_argument("--depths", type=_arch, nargs="+", default=depths, help="--scaling: architectures")
    p.add_argument(
        "--counts", type=_at_least(2), nargs="+", default=[2, 3, 4], help="--scaling: numbers of sub-networks"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=["all", *METHODS],
        help="time these methods' steps instead (each with its own default sub-networks and settings, "
        "at --arch; no reference): all, or names",
    )
    p.add_argument("--subnets-per-method", type=_at_least(1), help="--methods: this many sub-networks for every method")
    p.add_argument("--eager-too", action="store_true", help="--methods on a GPU: also time each step eagerly")
    p.add_argument("--json", help="also write the results as JSON to this file")
    return p


def main(argv=None) -> dict:
    p = parser()
    args = _check(p, p.parse_args(argv))
    try:
        return run(args)
    except SettingError as e:  # a step mode a method cannot run (--compile with an eager method)
        p.error(f"--{e.key.replace('_', '-')}: {e.reason}")


if __name__ == "__main__":
    main()
