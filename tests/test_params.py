import pytest

from pipeline.errors import ParamsError
from pipeline.params import apply_overrides, load_params, method_spec, validate
from tests.helpers import ROOT, tiny_params


def test_the_shipped_params_files_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.method.name == "ffl" and p.shared()
    full = load_params(ROOT / "configs/cifar100_resnet32.yaml")
    assert full.data.source == "cifar100" and full.archs() == ["resnet32", "resnet32"]
    assert full.train.epochs == 300 and full.train.milestone_epochs() == [150, 225]
    ffl = full.settings()
    assert ffl.fusion.weight_decay == 1e-5 and full.train.nesterov and ffl.temperature == 3 and ffl.rampup_epochs == 80


def test_a_recipe_is_params_yaml_with_its_own_keys_laid_over(tmp_path):
    """configs/*.yaml are overlays: what params.yaml gains (a new method's section, a search
    dimension) reaches every recipe, and a recipe changes only the keys it names."""
    from ffl.config_diff import differences
    from pipeline.params import read_yaml

    base = read_yaml(ROOT / "params.yaml")
    paper = read_yaml(ROOT / "configs/cifar100_resnet32.yaml")
    changed = {key for key, _, _ in differences(base, paper)}
    assert "train.epochs" in changed and "model.arch" in changed
    assert not any(k.startswith(("method.dml.", "method.kdcl.", "train.lr", "seed")) for k in changed)
    assert (
        paper["tune"]["space"]["method"]["dml"]["temperature"] == base["tune"]["space"]["method"]["dml"]["temperature"]
    )
    # An overlay of an overlay, relative to its own folder; a base that leads back is refused.
    (tmp_path / "a").mkdir()
    (tmp_path / "a/short.yaml").write_text(f"base: {ROOT / 'configs/cifar100_resnet32.yaml'}\ntrain: {{epochs: 3}}\n")
    short = load_params(tmp_path / "a/short.yaml")
    assert short.train.epochs == 3 and short.train.batch_size == 128 and short.data.source == "cifar100"
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(ParamsError, match="its bases lead back to themselves"):
        load_params(tmp_path / "x.yaml")
    (tmp_path / "z.yaml").write_text("base: [params.yaml]\n")
    with pytest.raises(ParamsError, match="base is the path of the params file this one changes"):
        load_params(tmp_path / "z.yaml")
    (tmp_path / "w.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ParamsError, match=r"missing\.yaml: params file not found"):
        load_params(tmp_path / "w.yaml")


def test_exponent_floats_are_numbers_as_in_dvc():
    p = validate(
        apply_overrides(tiny_params(), ["train.lr=1e-3", "train.weight_decay=5e-4", "method.ffl.temperature=4"])
    )
    assert p.train.lr == 1e-3 and p.train.weight_decay == 5e-4 and p.settings().temperature == 4.0


def test_overrides_use_dvc_exp_run_syntax():
    raw = apply_overrides(
        tiny_params(), ["train.lr=0.05", "model.archs=[resnet8, wrn10_2]", "method.ffl.fusion.width=8"]
    )
    p = validate(raw)
    assert p.train.lr == 0.05 and p.archs() == ["resnet8", "wrn10_2"] and p.settings().fusion.width == 8


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        (["train.lrr=0.1"], "train.lrr", "unknown key; did you mean train.lr?"),
        (["bogus=1"], "bogus", "unknown key"),
        (["method.ffl.ekd.wieght=1"], "method.ffl.ekd.wieght", "unknown key; did you mean method.ffl.ekd.weight?"),
        (["trian.epochs=3"], "trian", "unknown key; did you mean train?"),
        (["method.temperature=2"], "method.temperature", "moved to method.ffl.temperature"),
        (["method.name=dml", "method.temperature=2"], "method.temperature", "moved to method.dml.temperature"),
        (["fusion.width=8"], "fusion", "moved to method.ffl.fusion"),
        (["train.fusion_weight_decay=0"], "train.fusion_weight_decay", "moved to method.ffl.fusion.weight_decay"),
        (["method.ffl.temperature=.inf"], "method.ffl.temperature", "finite"),
        (["method.dml.update=sometimes"], "method.dml.update", "'alternating'"),
        (["model.subnets=1"], "model.subnets", "at least 2"),
        (["model.subnets=3", "model.archs=[resnet8, resnet8]"], "model.subnets", "does not match"),
        (["method.name=dualnet", "model.subnets=3"], "model.subnets", "at most 2"),
        (["train.milestones=[0.5, 0.5]"], "train.milestones", "increasing"),
        (["train.epochs=ten"], "train.epochs", "integer"),
        (["train.nesterov=maybe"], "train.nesterov", "boolean"),
        (["method.ffl.temperature=-1"], "method.ffl.temperature", "greater than 0"),
        (["train.lr=0"], "train.lr", "greater than 0"),
        (["train.epochs=0"], "train.epochs", "greater than or equal to 1"),
        (["data.val_fraction=1.5"], "data.val_fraction", "less than 1"),
        (["train.milestones=[0.75, 0.5]"], "train.milestones", "increasing"),
        (["model.archs=[resnet8, resnet7]"], "model.archs.1", "unknown architecture 'resnet7'"),
        (["method.name=moe"], "method.name", "'ffl'"),
        (["method.ffl.fusion.kernel_size=2"], "method.ffl.fusion.kernel_size", "odd"),
        (["model.archs=[resnet8, resnet18]", "model.shared=false"], "model.archs", "spatial sizes"),
        (["model.archs=[resnet8]"], "model.archs", "at least 2"),
        (["model.archs=[resnet8, wrn10_2]", "model.shared=true"], "model.shared", "one architecture"),
        (["method.name=one", "model.shared=false"], "model.shared", "one's branches share"),
        (["method.name=dml", "model.shared=true"], "model.shared", "independent"),
        (["method.ffl.fusion.enabled=false"], "method.ffl.ekd.enabled", "fusion"),
        (["method.name=dualnet", "model.archs=[resnet8, wrn10_2]"], "model.archs", "channel counts"),
        (["method.name=dml", "train.compile=default"], "train.compile", "several times per batch"),
        (["train.device=cpu", "train.cuda_graph=true"], "train.cuda_graph", "needs a CUDA device"),
        (["train.momentum=0"], "train.nesterov", "momentum"),
        (["train.device=tpu"], "train.device", "expected auto"),
        (["train.precision=fp16", "train.cuda_graph=true"], "train.cuda_graph", "bf16 or fp32"),
        (["train.compile=reduce-overhead", "train.cuda_graph=true"], "train.compile", "its own CUDA graphs"),
        (["train.cuda_graph=sometimes"], "train.cuda_graph", "auto"),
        (["train"], "train", "key=value"),
    ],
)
def test_bad_values_name_the_dotted_key_and_the_reason(overrides, key, reason):
    with pytest.raises(ParamsError) as e:
        validate(apply_overrides(tiny_params(), overrides))
    assert e.value.key == key
    assert reason in e.value.reason


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(ParamsError, match=r"malformed YAML at line \d+"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


def test_shared_auto_follows_the_method():
    assert validate(tiny_params()).shared() is True
    assert validate(apply_overrides(tiny_params(), ["model.archs=[resnet8, wrn10_2]"])).shared() is False
    assert validate(apply_overrides(tiny_params(), ["method.name=dml"])).shared() is False
    assert validate(apply_overrides(tiny_params(), ["method.name=one"])).shared() is True


def test_switching_the_method_switches_to_its_own_settings():
    """DML at T = 1 without a ramp-up, ONE with its 3 branches: never FFL's settings."""
    from ffl.methods import build_method

    dml = build_method(method_spec(validate(apply_overrides(tiny_params(), ["method.name=dml"])), 10))
    assert dml.settings.temperature == 1.0 and dml.settings.rampup_epochs == 0 and dml.settings.update == "alternating"
    assert dml.num_subnets == 2 and not dml.net.shared
    one = build_method(method_spec(validate(apply_overrides(tiny_params(), ["method.name=one"])), 10))
    assert one.num_subnets == 3 and one.net.shared and one.settings.temperature == 3.0
    assert one.param_groups(1e-4)[1]["weight_decay"] == 1e-4  # the gate: ONE's single parameter group
    vanilla = validate(apply_overrides(tiny_params(), ["method.name=vanilla"]))
    assert vanilla.archs() == ["resnet8"]


def test_the_paper_protocol_trains_on_every_image_and_keeps_the_last_batch():
    clean = validate(tiny_params())
    paper = validate(apply_overrides(tiny_params(), ["data.protocol=paper"]))
    assert clean.data.split_fraction() == 0.25 and paper.data.split_fraction() == 0.0


def test_method_spec_carries_the_ablation_switches():
    p = validate(apply_overrides(tiny_params(), ["method.ffl.fusion.enabled=false", "method.ffl.ekd.enabled=false"]))
    s = method_spec(p, 10)["settings"]
    assert s["fusion"]["enabled"] is False and s["ekd"]["enabled"] is False and s["fkd"]["enabled"] is True


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        (["tune.space.train.lr={type: loguniform, low: 0.5, high: 0.1}"], "tune.space.train.lr", "below high"),
        (["tune.space.train.lr={type: loguniform, low: 0, high: 0.1}"], "tune.space.train.lr", "low > 0"),
        (["tune.space.train.lr={type: gaussian, low: 0, high: 1}"], "tune.space.train.lr.type", "'uniform'"),
        (["tune.space.train.lr={type: uniform, low: 0, high: 1, step: 2}"], "tune.space.train.lr.step", "unknown key"),
        (
            ["tune.space.train.lr={type: uniform, low: 0, hihg: 1}"],
            "tune.space.train.lr.hihg",
            "unknown key; did you mean tune.space.train.lr.high?",
        ),
        (["tune.space.train.lr=0.1"], "tune.space.train.lr", "expected a section or a dimension"),
        (["tune.space.method.colour={type: uniform, low: 0, high: 1}"], "tune.space.method.colour", "not a param"),
        (
            ["tune.space.method.ffl.temperature={type: uniform, low: -1, high: 1}"],
            "tune.space.method.ffl.temperature",
            "-1.0 is refused",
        ),
        (
            ["tune.space.method.ffl.fusion.kernel_size={type: choice, values: [2, 3]}"],
            "tune.space.method.ffl.fusion.kernel_size",
            "2 is refused",
        ),
        (
            ["tune.space.method.temperature={type: uniform, low: 1, high: 2}"],
            "tune.space.method.temperature",
            "moved to tune.space.method.ffl.temperature",
        ),
        (
            ["tune.space={method: {dml: {temperature: {type: uniform, low: 1, high: 2}}}}"],
            "tune.space",
            "the search space is empty for ffl (its section: tune.space.method.ffl)",
        ),
        (["tune.scheduler.name=hyperopt"], "tune.scheduler.name", "'asha'"),
        (["tune.metric=val/top1_err/fused", "method.name=dml"], "tune.metric", "dml reports"),
        (["data.val_fraction=0"], "data.val_fraction", "validation split"),
        (["tune.resources.gpu=-1"], "tune.resources.gpu", "greater than or equal to 0"),
        (
            ["tune.space.train.processes={type: choice, values: [1, 2]}"],
            "tune.space.train.processes",
            "a trial is one process",
        ),
    ],
)
def test_bad_search_spaces_are_refused_before_ray_starts(overrides, key, reason):
    from pipeline.params import check_tune

    with pytest.raises(ParamsError) as e:
        raw = apply_overrides(tiny_params(), overrides)
        check_tune(validate(raw), raw)
    assert e.value.key == key
    assert reason in e.value.reason


@pytest.mark.parametrize(
    ("method", "metric", "own"),
    [
        ("ffl", "fused", {"temperature", "ce_weight", "rampup_epochs", "ekd.weight", "fkd.weight", "fusion.width"}),
        ("dml", "ensemble", {"temperature", "kd_weight", "rampup_epochs"}),
        ("vanilla", "sub0", set()),
    ],
)
def test_a_search_takes_the_running_methods_own_section_of_the_space(method, metric, own):
    """params.yaml holds a space per method: `ffl tune -S method.name=dml` searches DML's settings
    (and the lr and weight decay), never FFL's, and scores the classifier DML deploys."""
    from pipeline.params import check_tune, tune_metric

    raw = apply_overrides(tiny_params(), [f"method.name={method}"])
    p = validate(raw)
    check_tune(p, raw)
    assert p.tune.metric == "auto" and tune_metric(p) == f"val/top1_err/{metric}"
    dims = set(p.tune.dimensions(method))
    assert {f"method.{method}.{k}" for k in own} <= dims
    assert {k for k in dims if not k.startswith(f"method.{method}.")} == {"train.lr", "train.weight_decay"}


@pytest.mark.parametrize(
    ("overrides", "graph", "compile"),
    [
        ([], True, None),  # FFL on a GPU: the whole step as one graph, no torch.compile
        (["train.compile=default"], True, "default"),  # fused kernels inside the graph
        (["method.name=dualnet", "model.shared=auto"], True, None),  # one graph per phase (which net learns)
        (["method.name=dml"], True, None),  # alternating peers: several updates, one static step
        (["method.name=dml", "train.cuda_graph=false"], False, None),  # ... that torch.compile does not take
        (["train.precision=fp16"], False, "reduce-overhead"),  # the loss scaler syncs: torch.compile's graphs
        (["train.compile=reduce-overhead"], False, "reduce-overhead"),
        (["train.cuda_graph=false"], False, "reduce-overhead"),
    ],
)
def test_auto_speed_settings_on_a_gpu(overrides, graph, compile):
    from ffl.step_mode import StepMode, step_mode

    p = validate(apply_overrides(tiny_params(train={"precision": "bf16"}), overrides))
    t = p.train
    mode = step_mode(p.method_class, p.settings(), "cuda", t.precision, t.compile, t.cuda_graph)
    assert mode == StepMode(graph, compile)


def test_cpu_runs_are_eager():
    import torch

    from pipeline.run import run_step_mode

    for method in ("ffl", "dml", "one", "dualnet"):
        p = validate(apply_overrides(tiny_params(), [f"method.name={method}"]))
        mode = run_step_mode(p, torch.device("cpu"))
        assert (mode.cuda_graph, mode.compile) == (False, None)


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [(1, [1, 1]), (2, [1, 2]), (3, [2, 2]), (5, [3, 4]), (20, [10, 15]), (300, [150, 225])],
)
def test_lr_drops_are_never_at_epoch_zero_and_halves_round_up(epochs, expected):
    p = validate(apply_overrides(tiny_params(), [f"train.epochs={epochs}"]))
    assert p.train.milestone_epochs() == expected


def test_a_one_epoch_run_trains_at_the_configured_lr():
    import torch

    from ffl.data import make_shapes
    from pipeline.run import build_trainer

    p = validate(apply_overrides(tiny_params(), ["train.epochs=1", "train.lr=0.05"]))
    data = make_shapes(16, 6, 0.25)
    (metrics,) = build_trainer(p, data, torch.device("cpu")).fit()
    assert metrics["lr"] == 0.05


def test_decoding_workers_auto_fit_the_cores(monkeypatch):
    """data.files.workers: auto (the default): as many as the cores this process may use, up to 8,
    so a 2-core machine starts 2 (PyTorch warns at more); a number is taken as it is."""
    import os

    from ffl.data.file_loader import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_workers() == 8
    assert validate(tiny_params()).data.files.workers == "auto"
    assert validate(apply_overrides(tiny_params(), ["data.files.workers=0"])).data.files.workers == 0
    with pytest.raises(ParamsError, match=r"data\.files\.workers: expected auto or a whole number of workers"):
        validate(apply_overrides(tiny_params(), ["data.files.workers=-2"]))
