"""Every method's declaration, checked once for all: a new method file gets these tests for free."""

import copy
import dataclasses
import subprocess
import sys
import typing

import numpy as np
import pytest
import torch

from ffl.callbacks import Callback
from ffl.data import Augment, DeviceLoader, Split
from ffl.engine import TrainConfig, Trainer
from ffl.methods import METHODS, build_method
from ffl.methods import settings as method_settings
from pipeline.params import apply_overrides, method_spec, validate
from tests.helpers import ROOT, tiny_params

SETTINGS = [(name, row) for name, cls in METHODS.items() for row in method_settings.rows(cls.Settings)]
# Settings that are only valid together with another one.
COMPANIONS = {
    ("ffl", "fusion.enabled"): ["method.ffl.ekd.enabled=false"],
    ("dualnet", "finetune"): ["method.dualnet.finetune_fraction=0.5"],  # the second epoch fine-tunes
}


# Values that act within the test's four steps.
VALUES = {
    # the mean teacher's warm-up decay min(1 - 1/(step+1), decay) stays below 0.999 for 1000 steps
    ("pcl", "ema_decay"): 0.5,
    # two steps an epoch here: a meta step at every one of them, not only at the first
    ("lmcl", "meta_every"): 1,
}


def changed(row):
    """A valid value other than the default."""
    tp, default, bounds = row["type"], row["default"], row["bounds"]
    if typing.get_origin(tp) is typing.Literal:
        return next(v for v in typing.get_args(tp) if v != default)
    if default is None or isinstance(default, bool):
        return (not default) if isinstance(default, bool) else (16 if "width" in row["key"] else 0.05)
    if row["odd"]:
        return default + 2
    value = default * 3 + 0.3 if default else 0.4
    if "lt" in bounds:
        value = min(value, (bounds["lt"] + default) / 2)
    return type(default)(value)


def trainer(method, checkpoint=None, callbacks=()):
    """Two epochs on 16 fixed images, as many augmented views as the method takes."""
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 255, (16, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 16))
    views = method.train_views(method.num_subnets, method.settings)
    loader = DeviceLoader(
        split, 8, (127.0,) * 3, (64.0,) * 3, augment=Augment(), shuffle=True, drop_last=True, views=views
    )
    config = TrainConfig(epochs=2, milestones=[], precision="fp32")
    return Trainer(method, loader, config, callbacks=list(callbacks), checkpoint_path=checkpoint)


def result(trainer):
    history = [{k: v for k, v in h.items() if not k.startswith("time/")} for h in trainer.history]
    return {k: v.clone() for k, v in trainer.method.state_dict().items() if torch.is_tensor(v)}, history


def run(method, seed=0):
    """The weights (every tensor of the state) and the loss history of a two-epoch run."""
    torch.manual_seed(seed)
    t = trainer(method)
    t.fit()
    return result(t)


def build(name, overrides):
    raw = apply_overrides(tiny_params(), [f"method.name={name}", *overrides])
    torch.manual_seed(0)
    return build_method(method_spec(validate(raw), 10))


@pytest.mark.parametrize(("name", "row"), SETTINGS, ids=[f"{n}.{r['key']}" for n, r in SETTINGS])
def test_every_setting_reaches_its_method_and_changes_the_run(name, row):
    extra = COMPANIONS.get((name, row["key"]), [])
    value = VALUES.get((name, row["key"]), changed(row))
    base = build(name, extra)
    other = build(name, [*extra, f"method.{name}.{row['key']}={value!r}".replace("'", "")])
    got = other.settings
    for part in row["key"].split("."):
        got = getattr(got, part)
    assert got == value, "the params value did not reach the method's settings"
    (w0, h0), (w1, h1) = run(base), run(other)
    same = w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0) and h0 == h1
    assert not same, f"method.{name}.{row['key']}={value} changed nothing in a two-epoch run"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_declaration_is_whole(name):
    cls = METHODS[name]
    assert cls.reference
    for row in method_settings.rows(cls.Settings):
        assert row["doc"] and row["source"], f"{name}.{row['key']} needs a doc and the source of its default"
    low, high = cls.subnets
    assert low <= cls.default_subnets and (high is None or cls.default_subnets <= high)
    assert cls.sharing in ("shared", "independent", "either")
    method = cls(["resnet8"] * cls.default_subnets, 10)
    assert set(method.eval()(torch.zeros(2, 3, 32, 32))) == set(cls.outputs(cls.default_subnets, method.settings))
    clone = build_method(copy.deepcopy(method.spec()))
    assert dataclasses.asdict(clone.settings) == dataclasses.asdict(method.settings)


class Stop(Callback):
    def on_epoch_end(self, trainer, epoch, metrics):
        raise KeyboardInterrupt  # after the epoch's checkpoint, as a Ctrl-C there would


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_resumes_exactly(name, tmp_path):
    """Stopped after epoch 1 and resumed: every tensor of the state (EMA teachers, step counters
    included) and every logged number equal to an uninterrupted run's."""
    straight = run(build(name, []))
    stopped = trainer(build(name, []), tmp_path / "last.pt", [Stop()])
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    torch.manual_seed(123)  # a resumed process starts from another RNG state: the checkpoint restores it
    resumed = trainer(build(name, []), tmp_path / "last.pt")
    assert resumed.resume_if_possible() and resumed.start_epoch == 1
    resumed.fit()
    weights, history = result(resumed)
    assert history == straight[1]
    assert weights.keys() == straight[0].keys()
    for k, v in weights.items():
        assert torch.equal(v, straight[0][k]), f"{name}: {k} differs after the resume"


def test_params_yaml_lists_every_setting_of_every_method():
    """No hidden defaults: the shipped params file shows each method's whole section."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["method"]

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    for name, cls in METHODS.items():
        declared = {r["key"] for r in method_settings.rows(cls.Settings)}
        assert set(leaves(raw.get(name, {}))) == declared, name


def test_the_methods_docs_page_is_generated_from_the_declarations():
    from pipeline.methods_doc import render

    assert (ROOT / "docs/methods.md").read_text() == render(), "run `ffl methods --write docs/methods.md`"


def test_importing_ffl_loads_no_dvc_ray_typer_or_pydantic():
    code = "import sys, ffl; print([m for m in ('dvc', 'ray', 'typer', 'dvclive', 'pydantic') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_ffl_methods_shows_every_method_in_a_line_and_one_in_full():
    from typer.testing import CliRunner

    from ffl.methods import METHODS
    from pipeline.cli import app

    runner = CliRunner()
    listing = runner.invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert max(map(len, lines)) <= 120 and len(lines) == len(METHODS) + 2  # a header, one a method, the hint
    assert any(line.split()[:2] == ["ffl", "FFL"] and line.split()[-2:] == ["fused", "yes"] for line in lines)
    one = runner.invoke(app, ["methods", "okddip"], env={"COLUMNS": "100"})
    assert one.exit_code == 0 and "method.okddip.attention_factor" in one.output  # the whole key, never cut
    assert "Known differences from the original" in one.output and "method.ffl." not in one.output
    wrong = runner.invoke(app, ["methods", "fll"])
    assert wrong.exit_code == 2 and "no method 'fll'; the methods are dml, dualnet, ffl" in wrong.output


def test_a_model_file_saved_before_methods_owned_their_settings_loads_as_the_same_run():
    """Model files of the time when settings were flat keyword arguments: each method reads its own."""
    from ffl.methods import build_method

    old = {"method": "ffl", "archs": ["resnet8"] * 2, "num_classes": 10, "shared": True}
    ffl = build_method(old | {"temperature": 2.0, "ekd_weight": 0.5, "fusion_kernel_size": 1, "finetune_fraction": 0})
    assert ffl.settings.temperature == 2.0 and ffl.settings.ekd.weight == 0.5 and ffl.settings.ekd.enabled
    assert ffl.settings.fusion.kernel_size == 1
    dml = build_method(old | {"method": "dml", "shared": False, "kd_weight": 2.0, "epochs": 300})
    assert dml.settings.kd_weight == 2.0 and dml.settings.update == "joint"  # what the old DML did
    vanilla = {"method": "vanilla", "archs": ["resnet8"], "shared": False, "ce_weight": 1.0}
    assert build_method(old | vanilla).name == "vanilla"
