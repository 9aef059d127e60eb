"""Using what was trained: exported files plain PyTorch and ONNX Runtime run, predictions on image
files, class activation maps, and the fused features for other tasks."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ffl import FFL, DeviceLoader, make_shapes
from ffl.artifact import load_model
from ffl.cam import cam_picture, class_activation_maps
from ffl.data import load_dataset
from ffl.methods import METHODS
from pipeline import paths
from pipeline.cli import app
from tests.helpers import ROOT, ffl_as_a_user, needs_setpriv, tiny_params, write_params

runner = CliRunner()


def ffl(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output.strip()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with a tiny trained FFL model (module-wide: the tests only read it)."""
    d = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        write_params(d, tiny_params())
        for stage in ("prepare", "train", "evaluate"):
            code, out = ffl(stage)
            assert code == 0, out
    return d


@pytest.fixture
def workdir(trained, monkeypatch):
    monkeypatch.chdir(trained)
    return trained


def split_images(workdir):
    """The test split as floats in [0, 1] and as the trained model's normalised input."""
    data = load_dataset(paths.PREPARED)
    raw = torch.from_numpy(data.splits["test"].images[:16]).float() / 255
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    return data, raw, (raw - mean) / std


def test_exported_files_compute_what_the_trained_model_computes(workdir):
    code, out = ffl("export", "--out", "exported")
    assert code == 0, out
    data, images, normalised = split_images(workdir)
    method, _ = load_model(paths.MODEL)
    method.eval()
    with torch.no_grad():
        expected = method(normalised)
    manifest = json.loads((workdir / "exported/model.json").read_text())
    assert manifest["classes"] == data.classes and manifest["input"]["size"] == 32
    assert set(manifest["files"]) == {f"{c}.{f}" for c in ("sub0", "sub1", "fused") for f in ("pt2", "onnx")}

    import onnxruntime

    for name in ("sub0", "sub1", "fused"):
        # Plain PyTorch: no ffl import needed to load and run it; any batch size.
        program = torch.export.load(workdir / f"exported/{name}.pt2").module()
        torch.testing.assert_close(program(images), expected[name], rtol=1e-5, atol=1e-5)
        assert program(images[:3]).shape == (3, data.num_classes)
        session = onnxruntime.InferenceSession(str(workdir / f"exported/{name}.onnx"))
        (logits,) = session.run(None, {"images": images.numpy()})
        np.testing.assert_allclose(logits, expected[name].numpy(), rtol=1e-4, atol=1e-4)
    # One sub-network exported alone carries its own weights only (shared layers included), not
    # its peer's or the fusion module's.
    sub0 = torch.export.load(workdir / "exported/sub0.pt2").state_dict
    own = [method.net.trunk, method.net.branches[0], method.net.heads[0]]
    weights = sum(p.numel() for m in own for p in m.parameters())
    assert sum(v.numel() for k, v in sub0.items() if k.endswith((".weight", ".bias"))) == weights
    assert sum(p.numel() for p in method.parameters()) > 2 * weights - sum(p.numel() for p in own[0].parameters())


def test_the_same_model_exports_the_same_bytes(workdir):
    """`dvc repro` twice leaves dvc.lock as it was: every exported file is a function of the model."""
    assert ffl("export", "--out", "once")[0] == 0
    assert ffl("export", "--out", "twice")[0] == 0
    once = {p.name: p.read_bytes() for p in (workdir / "once").iterdir()}
    assert once == {p.name: p.read_bytes() for p in (workdir / "twice").iterdir()}
    assert {n.rsplit(".", 1)[-1] for n in once} == {"pt2", "onnx", "json"}
    # ... and of nothing else: no source path of this checkout (a fresh clone elsewhere, as CI's and
    # every user's, must export the bytes dvc.lock records).
    import io
    import zipfile

    source = str(ROOT).encode()
    for name, data in once.items():
        archive = zipfile.ZipFile(io.BytesIO(data)) if name.endswith(".pt2") else None
        parts = [archive.read(n) for n in archive.namelist()] if archive else [data]
        assert not any(source in part for part in parts), name


def test_exporting_one_classifier_again_keeps_the_others(workdir):
    assert ffl("export", "--out", "both")[0] == 0
    before = {p.name: p.read_bytes() for p in (workdir / "both").iterdir()}
    code, out = ffl("export", "--out", "both", "--classifier", "sub0", "--format", "onnx")
    assert code == 0 and "another model" not in out, out
    assert {p.name: p.read_bytes() for p in (workdir / "both").iterdir()} == before  # the same model: the same files
    manifest = json.loads((workdir / "both/model.json").read_text())
    assert set(manifest["files"]) == {f"{c}.{f}" for c in ("sub0", "sub1", "fused") for f in ("pt2", "onnx")}


def test_an_export_of_another_model_is_replaced_and_said_so(workdir):
    assert ffl("export", "--out", "other", "--classifier", "sub1")[0] == 0
    manifest = json.loads((workdir / "other/model.json").read_text())
    manifest["model_sha256"] = "0" * 64  # as if exported from an earlier model
    (workdir / "other/model.json").write_text(json.dumps(manifest))
    code, out = ffl("export", "--out", "other", "--classifier", "sub0", "--format", "pt2")
    assert code == 0 and "were exported from another model; replaced by this model's" in out
    assert sorted(p.name for p in (workdir / "other").iterdir()) == ["model.json", "sub0.pt2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--classifier", "sub7"], "error: --classifier: ffl has sub0, sub1, ensemble, fused; got 'sub7'"),
        (["--format", "tflite"], "error: --format: 'tflite'; expected one of pt2, onnx"),
        (["--model", "nothere.pt"], "error: nothere.pt: no such file"),
    ],
)
def test_export_refuses_what_it_cannot_write_and_keeps_earlier_files(workdir, args, message):
    assert ffl("export", "--out", "kept", "--classifier", "sub0", "--format", "pt2")[0] == 0
    before = {p.name: p.read_bytes() for p in (workdir / "kept").iterdir()}
    code, out = ffl("export", "--out", "kept", *args)
    assert code == 2 and out == message
    assert {p.name: p.read_bytes() for p in (workdir / "kept").iterdir()} == before


def test_predict_names_unreadable_files_and_goes_on(workdir, tmp_path):
    data, _, normalised = split_images(workdir)
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for i in range(3):  # the test images themselves, as PNG: predictions must match the model's
        Image.fromarray(data.splits["test"].images[i].transpose(1, 2, 0)).save(folder / f"{i}.png")
    Image.fromarray(data.splits["test"].images[3].transpose(1, 2, 0)).resize((120, 90)).save(folder / "more/big.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image: not looked at")

    result = runner.invoke(app, ["predict", str(folder), "--json", "--top", "10"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["file"].rsplit("/", 1)[-1] for x in lines] == ["0.png", "1.png", "2.png", "big.jpg"]
    assert result.stderr.count("warning:") == 1 and "broken.jpg: cannot read it as an image" in result.stderr
    method, _ = load_model(paths.MODEL)
    method.eval()
    with torch.no_grad():
        probs = torch.softmax(method(normalised[:3])["fused"], dim=1)
    for i in range(3):
        got = dict(lines[i]["top"])
        assert lines[i]["classifier"] == "fused" and len(got) == 10
        for c, name in enumerate(data.classes):
            assert got[name] == pytest.approx(probs[i, c].item(), abs=1e-5)


def test_predict_skips_an_image_too_large_to_decode_and_reads_each_file_once(workdir, tmp_path):
    from tests.imagenet_archive import write_png_header

    data, _, _ = split_images(workdir)
    Image.fromarray(data.splits["test"].images[0].transpose(1, 2, 0)).save(tmp_path / "cat.png")
    write_png_header(tmp_path / "strip.png", 100_000, 700)  # 70 million pixels declared, 80 bytes on disk
    same = [str(tmp_path / "cat.png"), str(tmp_path), f"{tmp_path}/../{tmp_path.name}/cat.png"]
    result = runner.invoke(app, ["predict", *same, "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["file"] for x in result.stdout.splitlines()] == [str(tmp_path / "cat.png")]
    assert result.stderr.splitlines() == [
        f"warning: {tmp_path / 'strip.png'}: cannot read it as an image (100000 x 700 pixels, beyond the 67 million "
        "ffl decodes); skipped"
    ]


@needs_setpriv
def test_what_a_user_may_not_write_or_read_is_named_and_nothing_is_replaced(workdir, tmp_path):
    """As a user, not root: a read-only --out is refused whole (an export replaces its folder by a
    rename, which the folder's own mode would not stop); an unreadable image is skipped by name."""
    import stat

    assert ffl("export", "--out", str(tmp_path / "ro"), "--format", "onnx")[0] == 0  # an earlier export
    before = {f.name: f.read_bytes() for f in (tmp_path / "ro").iterdir()}
    for f in [*(tmp_path / "ro").iterdir(), tmp_path / "ro"]:
        f.chmod(f.stat().st_mode & ~0o222)
    try:
        proc = ffl_as_a_user(workdir, "export", "--out", str(tmp_path / "ro"))
        assert proc.returncode == 2
        assert proc.stderr.splitlines() == [
            f"error: --out: {tmp_path / 'ro'} is not writable; an export replaces it, so name a folder you may write"
        ]
        assert {f.name: f.read_bytes() for f in (tmp_path / "ro").iterdir()} == before
        assert not stat.S_IMODE((tmp_path / "ro").stat().st_mode) & 0o222 and not list(tmp_path.glob(".ro.*"))
    finally:
        (tmp_path / "ro").chmod(0o755)

    data, _, _ = split_images(workdir)
    for name in ("good.png", "secret.png"):
        Image.fromarray(data.splits["test"].images[0].transpose(1, 2, 0)).save(tmp_path / name)
    (tmp_path / "secret.png").chmod(0)
    proc = ffl_as_a_user(tmp_path, "predict", "good.png", "secret.png", "--json", "--model", str(workdir / paths.MODEL))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["file"] for x in proc.stdout.splitlines()] == ["good.png"]
    assert proc.stderr.splitlines() == [
        "warning: secret.png: cannot read it as an image ([Errno 13] Permission denied: 'secret.png'); skipped"
    ]


def test_predict_reads_every_format_pillow_opens(workdir, tmp_path):
    data, _, _ = split_images(workdir)
    frames = [Image.fromarray(data.splits["test"].images[i].transpose(1, 2, 0)) for i in range(2)]
    frames[0].save(tmp_path / "a.png")
    frames[0].save(tmp_path / "b.gif", save_all=True, append_images=frames[1:])  # animated: its first frame
    result = runner.invoke(app, ["predict", str(tmp_path), "--json"])
    assert result.exit_code == 0 and not result.stderr, result.output
    assert [json.loads(x)["file"].rsplit("/", 1)[1] for x in result.stdout.splitlines()] == ["a.png", "b.gif"]


def test_predict_with_nothing_readable_is_an_error(workdir, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    code, out = ffl("predict", str(tmp_path / "broken.png"), str(tmp_path / "missing.jpg"))
    assert code == 2 and out.splitlines()[-1] == "error: none of the 2 files could be read"
    assert f"{tmp_path / 'missing.jpg'} does not exist" in out  # not "not a regular file"
    code, out = ffl("predict", str(tmp_path / "empty_dir_missing"))
    assert code == 2


@pytest.mark.parametrize("name", sorted(METHODS))
def test_class_activation_maps_are_where_the_logits_come_from(name):
    """Every classifier's map for class c, averaged over its positions, plus the bias, is its logit."""
    cls = METHODS[name]
    method = cls(["resnet8"] * cls.default_subnets, 10).eval()
    images, classes = torch.randn(3, 3, 32, 32), torch.tensor([1, 4, 7])
    with torch.no_grad():
        logits = method(images)
        maps = class_activation_maps(method, images, classes)
        biases = {k: fc.bias for k, (_, fc) in method.classifier_features(images).items()}
    assert set(maps) >= {f"sub{i}" for i in range(method.num_subnets)}
    assert ("fused" in maps) == ("fused" in logits)
    for clf, m in maps.items():
        assert m.shape == (3, 8, 8)
        torch.testing.assert_close(m.mean((1, 2)) + biases[clf][classes], logits[clf][torch.arange(3), classes])


def test_evaluation_draws_the_maps_of_every_classifier(workdir):
    picture = Image.open(workdir / paths.CAM)
    # 8 rows (one test image per class), the image and sub0, sub1, fused: 4 tiles of 4 x 32 pixels.
    assert picture.size == (80 + 4 * 128, 16 + 8 * 128)
    maps = {"a": torch.zeros(2, 8, 8), "b": torch.rand(2, 8, 8)}
    assert cam_picture(torch.rand(2, 3, 32, 32), maps, ["x", "y"]).size == (80 + 3 * 128, 16 + 2 * 128)


def test_fused_features_feed_another_task():
    """The README's example: FFL's fused map as a feature for a new head; the fused classifier is
    its pooled, linear read-out."""
    data = make_shapes(train_per_class=4, test_per_class=2)
    method = FFL(["resnet8", "resnet8"], num_classes=data.num_classes).eval()
    images, _ = next(iter(DeviceLoader(data.splits["test"], 8, data.mean, data.std)))
    with torch.no_grad():
        fmap = method.fused_features(images)
        assert fmap.shape == (8, 64, 8, 8)
        torch.testing.assert_close(method.fusion.classifier(fmap), method(images)["fused"])


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("models", "--out: models holds other files (model.pt); an export replaces its folder whole"),
        (".", "--out: . is the project itself"),
        ("params.yaml", "--out: params.yaml is not a folder"),
    ],
)
def test_export_never_replaces_a_folder_that_is_not_an_export(workdir, out, message):
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and ".lock" not in p.name}
    code, output = ffl("export", "--out", out)
    assert (code == 2 and output == f"error: {message}") or message in output, output
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and ".lock" not in p.name} == before


def test_predict_reads_16_bit_greys_and_skips_pipes(workdir, tmp_path):
    import os

    ramp = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    from ffl.deploy import InputSpec, load_images

    spec = InputSpec(32, 32, (0.5,) * 3, (0.25,) * 3)
    images, kept, failed = load_images([tmp_path / "ramp16.png", tmp_path / "pipe.png"], spec)
    assert kept == [tmp_path / "ramp16.png"] and failed[0][0] == tmp_path / "pipe.png"
    # The 16-bit levels scaled to [0, 1], not clipped at 255 (Pillow's own conversion would).
    torch.testing.assert_close(images[0, 0], torch.from_numpy(ramp / 65535).float(), atol=1 / 255, rtol=0)


def test_a_model_whose_record_of_the_data_is_malformed_is_refused(workdir, tmp_path):
    model = torch.load(paths.MODEL, weights_only=True)
    model["dataset"]["classes"] = ["a", "b", "c"]
    torch.save(model, tmp_path / "m.pt")
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    code, out = ffl("predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "m.pt"))
    assert code == 2 and "its record of the data is malformed (3 class names for 10 outputs)" in out
