"""A trained classifier for use outside this project: exported files plain PyTorch (``torch.export``)
and ONNX runtimes load, and predictions on image files.

An exported model takes RGB images as floats in [0, 1], NCHW, of the size the model was trained on
(``InputSpec.size``), any batch size; it normalises them itself and returns logits. One sub-network
exported alone holds its own layers only (the shared low-level layers included): the poster's
FFL-S, the network that online distillation makes better. The fused classifier holds every
sub-network and the fusion module.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ffl import atomic
from ffl.data.images import image_suffixes, read_rgb
from ffl.errors import one_line
from ffl.methods import Method

FORMATS = ("pt2", "onnx")  # torch.export.save / torch.onnx.export files, by suffix
MANIFEST = "model.json"


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: the training images' size, and how a larger image is brought to it."""

    size: int  # square side the network was trained on
    resize: int  # the shorter side is resized to this, then centre-cropped to ``size`` (ImageNet: 256 -> 224)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def transform(self):
        """PIL image -> float tensor in [0, 1], as evaluation sees the test images."""
        from torchvision import transforms

        return transforms.Compose(
            [transforms.Resize(self.resize), transforms.CenterCrop(self.size), transforms.ToTensor()]
        )


class Deployable(nn.Module):
    """One classifier of a trained method: images in [0, 1] -> its logits, normalisation inside."""

    def __init__(self, method: Method, classifier: str, spec: InputSpec):
        super().__init__()
        names = method.outputs(method.num_subnets, method.settings)
        if classifier not in names:
            raise ValueError(f"unknown classifier {classifier!r}: {method.name} has {', '.join(names)}")
        self.classifier = classifier
        # A classifier that is one network alone (a sub-network, OKDDip's leader, PCL's temporal
        # means) is exported without the rest; others (fused, ensembles) with the whole method.
        self.body = method.standalone(classifier) or method
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.body((images - self.mean) / self.std)
        return out[self.classifier] if isinstance(out, dict) else out


def export(
    method: Method,
    spec: InputSpec,
    classes: Sequence[str],
    out: str | Path,
    classifiers: Iterable[str],
    formats: Iterable[str] = FORMATS,
    model_id: str | None = None,
    keep: str | Path | None = None,
) -> list[Path]:
    """Writes ``<out>/<classifier>.<format>`` for each, and ``<out>/model.json`` describing them.

    ``model_id`` (the model file's sha256) is recorded in model.json. ``keep``: an earlier export
    folder; its other files come along when it is an export of the same model (one classifier
    exported again does not drop the rest), never when it is another model's."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    method = method.cpu().eval()
    # A fixed example: torch.export saves it in the file (sample_inputs), which must not change between runs.
    example = torch.linspace(0, 1, 2 * 3 * spec.size * spec.size).reshape(2, 3, spec.size, spec.size)
    batch = torch.export.Dim("batch", min=1)
    written = []
    for name in classifiers:
        module = Deployable(method, name, spec).eval()
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            if fmt == "pt2":
                program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
                # Each node records the stack it was traced from, with the source files' absolute
                # paths: dropped (as from the ONNX file), so that the same model gives the same file
                # wherever the project is checked out, and dvc.lock stays as committed.
                for graph_module in program.graph_module.modules():
                    if isinstance(graph_module, torch.fx.GraphModule):
                        for node in graph_module.graph.nodes:
                            node.meta.pop("stack_trace", None)
                # Through memory: torch's zip writer, on a full disk, throws again from its
                # destructor and aborts the process; a buffer then written like every output fails
                # as an OSError naming the file.
                buffer = io.BytesIO()
                torch.export.save(program, buffer)
                atomic.write_bytes(path, buffer.getvalue())
            elif fmt == "onnx":
                _export_onnx(module, example, batch, path, classes)
            else:
                raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
            written.append(path)
    files = {p.name: p.stem for p in written}
    kept = same_model_files(keep, model_id) if keep is not None else {}
    for name, classifier in kept.items():
        if name not in files:
            shutil.copy2(Path(keep) / name, out / name)
            files[name] = classifier
    manifest = {
        "method": method.name,
        "model_sha256": model_id,
        "classes": list(classes),
        "input": asdict(spec) | {"layout": "NCHW, RGB, float in [0, 1]; normalised inside the model"},
        "output": "logits (softmax gives the class probabilities)",
        "files": dict(sorted(files.items())),
    }
    atomic.write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return written


def same_model_files(folder: str | Path, model_id: str | None) -> dict[str, str]:
    """``{file: classifier}`` of an earlier export in ``folder`` made from the model ``model_id``;
    empty when it is another model's (or unreadable, or the model is unknown)."""
    try:
        previous = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if model_id is None or not isinstance(previous, dict) or previous.get("model_sha256") != model_id:
        return {}
    files = previous.get("files")
    if not isinstance(files, dict):
        return {}
    return {n: c for n, c in files.items() if isinstance(n, str) and "/" not in n and (Path(folder) / n).is_file()}


def _export_onnx(module, example, batch, path: Path, classes) -> None:
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter narrates its passes; the file is what matters
        program = torch.onnx.export(
            module,
            (example,),
            dynamic_shapes=({0: batch},),
            input_names=["images"],
            output_names=["logits"],
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props["classes"] = json.dumps(list(classes))
    # Each node records the Python stack it was traced from, with a counter that moves on every
    # trace in the process (<eval_with_key>.N): dropped, so that the same model gives the same file.
    for graph in (program.model.graph, *program.model.functions.values()):
        for node in graph:
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    program.save(path)


# -- predictions on image files ---------------------------------------------------------------


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named, and every file of an image format Pillow opens under the folders named
    (sorted), each once."""
    found, suffixes = [], image_suffixes()
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
        else:
            found.append(p)
    # Named twice (a file and its folder, two spellings, a link): predicted once.
    unique: dict[Path, Path] = {}
    for f in found:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def load_images(paths: Sequence[Path], spec: InputSpec) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """``(images, the paths they came from, [(path, why) for the ones that could not be read])``:
    a file that is not an image, is damaged, or declares a size beyond ``ffl.data.images.MAX_PIXELS``
    is one of the latter."""
    from PIL import Image

    transform = spec.transform()
    images, kept, failed = [], [], []
    for path in paths:
        try:
            if not Path(path).exists():
                raise OSError(f"{path} does not exist")
            if not Path(path).is_file():  # a pipe or a device would block, a folder is no image
                raise OSError(f"{path} is not a regular file")
            images.append(transform(read_rgb(path, spec.resize)))
            kept.append(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            failed.append((path, one_line(e)))
    batch = torch.stack(images) if images else torch.empty(0, 3, spec.size, spec.size)
    return batch, kept, failed


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities of ``model`` (a ``Deployable`` or an exported module) for each image."""
    probs = [torch.softmax(model(chunk).float(), dim=1) for chunk in images.split(batch_size)]
    return torch.cat(probs) if probs else torch.empty(0)
