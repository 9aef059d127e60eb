"""`ffl reproduce --dry-run`: what a table's runs would cost (GPU hours from each method's
measured step, configs/gpu_throughput.yaml, scaled by FLOPs where none is measured) and whether
their data is there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ffl.data import DatasetNotFound
from ffl.data.cifar import find_form
from ffl.methods import build_method
from pipeline.experiments import recorded, sort_out
from pipeline.params import Params, apply_overrides, method_spec, read_yaml, validate
from pipeline.params.base import Section, refused
from pipeline.tables import Run

# What `ffl reproduce --dry-run` estimates from: each method's measured step (`ffl bench --methods`).
THROUGHPUT = Path("configs/gpu_throughput.yaml")
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}


def train_images(p: Params) -> int | None:
    d = p.data
    if d.source == "shapes":
        n = d.shapes.train_per_class * 10
    elif d.source in TRAIN_IMAGES:
        n = TRAIN_IMAGES[d.source]
    else:
        return None
    return round(n * (1 - d.split_fraction()))


def flops_per_image(p: Params) -> float:
    """Forward FLOPs of the run's whole method (every sub-network, the fusion) on one image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}.get(p.data.source, 10)
    size = p.data.files.image_size if p.data.source in ("imagenet", "imagefolder") else 32
    method = build_method(method_spec(p, classes)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        method(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


class Throughput(Section):
    gpu: str
    date: str
    torch: str
    batch_size: int
    images_per_s: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Estimate:
    hours: float
    basis: str  # "measured" or what it was scaled from


def estimate_hours(runs: list[Run], path: Path = THROUGHPUT) -> tuple[dict[str, Estimate | None], Throughput]:
    """GPU hours per run: the measured images/s of its method and networks where there is one;
    else a measured figure (the same method's, or FFL's) scaled by the ratio of forward FLOPs."""
    try:
        measured = Throughput.model_validate(read_yaml(path))
    except ValidationError as e:
        raise refused(e, Throughput, file=path) from None
    ref_flops: dict[tuple[str, str], float] = {}
    flops: dict[tuple[str, str], float] = {}  # a row's seeds run the same network: counted once
    out: dict[str, Estimate | None] = {}
    for run in runs:
        images = train_images(run.params)
        if images is None:
            out[run.name] = None
            continue
        p = run.params
        figures = measured.images_per_s.get(p.method.name, {})
        archs = p.archs()
        exact = len(set(archs)) == 1 and len(archs) == p.method_class.default_subnets and archs[0] in figures
        if exact and p.train.batch_size == measured.batch_size and p.data.source.startswith("cifar"):
            rate, basis = figures[archs[0]], "measured"
        else:
            method, figures = (p.method.name, figures) if figures else ("ffl", measured.images_per_s["ffl"])
            arch = "resnet32" if "resnet32" in figures else next(iter(figures))
            if (method, arch) not in ref_flops:
                ref_flops[method, arch] = flops_per_image(reference_params(method, arch))
            if (run.table, run.row) not in flops:
                flops[run.table, run.row] = flops_per_image(p)
            rate = figures[arch] * ref_flops[method, arch] / flops[run.table, run.row]
            basis = f"scaled from {method} {arch}"
        out[run.name] = Estimate(p.train.epochs * images / rate / 3600, basis)
    return out, measured


def reference_params(method: str, arch: str) -> Params:
    """The params of a measured figure: the method at its default size, CIFAR-100."""
    sets = ["data.source=cifar100", f"method.name={method}", f"model.arch={arch}", "model.subnets=auto"]
    return validate(apply_overrides(read_yaml("params.yaml"), [*sets, "model.archs=null", "model.shared=auto"]))


def missing_data(params: Params, root: Path) -> str | None:
    """Why the run's dataset is not at ``root`` (a quick look, no checksums), or None."""
    d = params.data
    if d.source == "shapes":
        return None
    if d.source in TRAIN_IMAGES and d.source != "imagenet":
        try:
            find_form(d.source, root)
        except DatasetNotFound as e:
            return str(e)
        return None
    return None if root.is_dir() else f"{d.source}: data.root {root} is not a folder"


def dry_run(runs: list[Run], echo=print) -> dict:
    roots = {(r.params.data.source, r.params.data.root) for r in runs}
    missing = {}
    for source, root in sorted(roots):
        params = next(r.params for r in runs if (r.params.data.source, r.params.data.root) == (source, root))
        if (why := missing_data(params, Path(root))) is not None:
            missing[f"{source} at {root}"] = why
    for where, why in missing.items():
        echo(f"data missing ({where}): {why}")
    hours, measured = estimate_hours(runs)
    _, done = sort_out(runs, recorded()) if Path(".dvc").is_dir() else ([], {})
    for run in runs:
        e = hours[run.name]
        state = (
            f"recorded ({done[run.name]})"
            if run.name in done
            else f"~{e.hours:.2f} GPU h ({e.basis})"
            if e
            else "unknown size"
        )
        echo(f"{run.name:48s} {run.params.method.name:8s} {'+'.join(run.params.archs()):28s} {state}")
    left = [hours[r.name].hours for r in runs if r.name not in done and hours[r.name] is not None]
    echo(
        f"{len(runs)} runs, {len(runs) - len(left)} recorded or unknown; ~{sum(left):.1f} GPU hours left, from "
        f"each method's step measured by ffl bench on an {measured.gpu} ({measured.date}, {THROUGHPUT}) without "
        "torch.compile or stacked seeds (docs/benchmarks.md: both shorten it), evaluation not included"
    )
    return {
        "runs": [r.name for r in runs],
        "gpu_hours": {k: v and v.hours for k, v in hours.items()},
        "missing_data": missing,
    }
