"""Using the trained model outside the project: standalone exported files, and predictions on
image files."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ffl import atomic
from ffl.data.images import image_suffixes
from ffl.deploy import FORMATS, MANIFEST, Deployable, image_files, load_images
from ffl.deploy import export as deploy_export
from ffl.deploy import predict as deploy_predict
from pipeline import paths
from pipeline.errors import UserError
from pipeline.model_file import check_classifier, deployed, trained_model
from pipeline.runtime import ensure_writable


def export(
    classifiers: list[str] | None = None,
    formats: list[str] | None = None,
    out: Path = paths.EXPORT,
    model: Path = paths.MODEL,
) -> list[Path]:
    """Standalone files of the trained classifiers (default: every sub-network alone and the
    deployed one) as torch.export programs and ONNX, with model.json describing their input."""
    method, spec, classes = trained_model(model)
    if classifiers:
        names = [check_classifier(method, c) for c in classifiers]
    else:
        names = [f"sub{i}" for i in range(method.num_subnets)]
        names += [deployed(method)] if deployed(method) not in names else []
    unknown = [f for f in formats or () if f not in FORMATS]
    if unknown:
        raise UserError(f"--format: {unknown[0]!r}; expected one of {', '.join(FORMATS)}")
    check_export_folder(out)
    ensure_writable(out.parent)
    model_id = hashlib.sha256(model.read_bytes()).hexdigest()
    # Written beside, then swapped in: a failed export leaves the previous files whole. An earlier
    # export of the same model keeps its other files; another model's is replaced whole.
    staging = out.with_name(f".{out.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    earlier = out if out.is_dir() else None
    try:
        files = deploy_export(method, spec, classes, staging, names, formats or FORMATS, model_id, earlier)
        dropped = sorted(p.name for p in out.iterdir() if not (staging / p.name).exists()) if earlier else []
        if dropped:
            print(f"{out}: its earlier files ({', '.join(dropped[:3])}{' ...' if len(dropped) > 3 else ''}) were "
                  f"exported from another model; replaced by this model's")  # fmt: skip
        atomic.replace_directory(staging, out)
    except OSError as e:
        raise UserError(f"--out: cannot write {out} ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / f.name for f in files]


def check_export_folder(out: Path) -> None:
    """``--out`` is replaced whole: it may only be a new folder or one that holds an export."""
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise UserError(f"--out: {out} is the project itself; name a folder of its own (models/export)")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out: {out} is not a folder")
    if out.is_dir():
        if os.path.ismount(out):
            raise UserError(f"--out: {out} is a mount point; name a folder inside it")
        if not os.access(out, os.W_OK):  # replaced whole, by a rename its own mode would not stop
            raise UserError(f"--out: {out} is not writable; an export replaces it, so name a folder you may write")
        foreign = [p.name for p in out.iterdir() if p.name != MANIFEST and p.suffix.lstrip(".") not in FORMATS]
        if foreign:
            raise UserError(
                f"--out: {out} holds other files ({', '.join(sorted(foreign)[:3])}); an export replaces its folder "
                "whole, so name a new one or an earlier export's"
            )


def predict(
    inputs: list[Path], classifier: str = "auto", top: int = 3, model: Path = paths.MODEL
) -> tuple[list[dict], list[tuple[Path, str]]]:
    """``([{"file", "classifier", "top": [[class, probability], ...]}], [(unreadable file, why)])``."""
    method, spec, classes = trained_model(model)
    name = check_classifier(method, classifier)
    files = image_files(inputs)
    if not files:
        raise UserError(
            f"no image files in {', '.join(map(str, inputs))} (looked for the {len(image_suffixes())} formats "
            "Pillow opens: .jpg, .png, .gif, .webp, .tiff, .bmp, ...)"
        )
    images, kept, failed = load_images(files, spec)
    probs = deploy_predict(Deployable(method, name, spec).eval(), images)
    k = min(top, len(classes))
    results = []
    for path, p in zip(kept, probs):
        values, indices = p.topk(k)
        top_k = [[classes[i], round(float(v), 6)] for v, i in zip(values, indices)]
        results.append({"file": str(path), "classifier": name, "top": top_k})
    return results, failed
