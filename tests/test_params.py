import pytest

from pipeline.errors import ParamsError
from pipeline.params import apply_overrides, load_params, method_spec, validate
from tests.helpers import ROOT, tiny_params


def test_the_shipped_params_files_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.method.name == "ffl" and p.shared()
    full = load_params(ROOT / "configs/cifar100_resnet32.yaml")
    assert full.data.source == "cifar100" and full.model.archs == ["resnet32", "resnet32"]
    assert full.train.epochs == 300 and full.train.milestone_epochs() == [150, 225]
    assert full.train.fusion_weight_decay == 1e-5 and full.train.nesterov and full.method.temperature == 3


def test_exponent_floats_are_numbers_as_in_dvc():
    p = validate(apply_overrides(tiny_params(), ["train.lr=1e-3", "train.weight_decay=5e-4", "method.temperature=4"]))
    assert p.train.lr == 1e-3 and p.train.weight_decay == 5e-4 and p.method.temperature == 4.0


def test_overrides_use_dvc_exp_run_syntax():
    raw = apply_overrides(tiny_params(), ["train.lr=0.05", "model.archs=[resnet8, wrn10_2]", "fusion.width=null"])
    p = validate(raw)
    assert p.train.lr == 0.05 and p.model.archs == ["resnet8", "wrn10_2"] and p.fusion.width is None


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        (["train.lrr=0.1"], "train.lrr", "unknown key"),
        (["bogus=1"], "bogus", "unknown key"),
        (["method.ekd.wieght=1"], "method.ekd.wieght", "unknown key"),
        (["train.epochs=ten"], "train.epochs", "integer"),
        (["train.nesterov=maybe"], "train.nesterov", "boolean"),
        (["method.temperature=-1"], "method.temperature", "greater than 0"),
        (["train.lr=0"], "train.lr", "greater than 0"),
        (["train.epochs=0"], "train.epochs", "greater than or equal to 1"),
        (["data.val_fraction=1.5"], "data.val_fraction", "less than 1"),
        (["train.milestones=[0.75, 0.5]"], "train.milestones", "increasing"),
        (["model.archs=[resnet8, resnet7]"], "model.archs.1", "unknown architecture 'resnet7'"),
        (["method.name=moe"], "method.name", "'ffl'"),
        (["fusion.kernel_size=2"], "fusion.kernel_size", "odd"),
        (["model.archs=[resnet8, resnet18]", "model.shared=false"], "model.archs", "spatial sizes"),
        (["model.archs=[resnet8]"], "model.archs", "at least 2"),
        (["model.archs=[resnet8, wrn10_2]", "model.shared=true"], "model.shared", "one architecture"),
        (["method.name=one", "model.shared=false"], "model.shared", "ONE"),
        (["method.name=dml", "model.shared=true"], "model.shared", "independent"),
        (["fusion.enabled=false"], "method.ekd.enabled", "fusion"),
        (["method.name=dualnet", "model.archs=[resnet8, wrn10_2]"], "model.archs", "channel counts"),
        (["train.momentum=0"], "train.nesterov", "momentum"),
        (["train.device=tpu"], "train.device", "expected auto"),
        (["method.name=dualnet", "train.cuda_graph=true"], "train.cuda_graph", "dualnet"),
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


def test_method_spec_carries_the_ablation_switches():
    p = validate(apply_overrides(tiny_params(), ["fusion.enabled=false", "method.ekd.enabled=false"]))
    spec = method_spec(p, 10)
    assert spec["fusion"] is False and spec["ekd"] is False and spec["fkd"] is True


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        (["tune.space.train.lr={type: loguniform, low: 0.5, high: 0.1}"], "tune.space.train.lr", "below high"),
        (["tune.space.train.lr={type: loguniform, low: 0, high: 0.1}"], "tune.space.train.lr", "low > 0"),
        (["tune.space.train.lr={type: gaussian, low: 0, high: 1}"], "tune.space.train.lr.type", "'uniform'"),
        (["tune.space.train.lr={type: uniform, low: 0, high: 1, step: 2}"], "tune.space.train.lr.step", "unknown key"),
        (["tune.space.train.lr=0.1"], "tune.space.train.lr", "expected a section or a dimension"),
        (["tune.space.method.colour={type: uniform, low: 0, high: 1}"], "tune.space.method.colour", "not a param"),
        (
            ["tune.space.method.temperature={type: uniform, low: -1, high: 1}"],
            "tune.space.method.temperature",
            "-1.0 is refused",
        ),
        (
            ["tune.space.fusion.kernel_size={type: choice, values: [2, 3]}"],
            "tune.space.fusion.kernel_size",
            "2 is refused",
        ),
        (["tune.scheduler.name=hyperopt"], "tune.scheduler.name", "'asha'"),
        (["tune.metric=val/acc/fused", "method.name=dml"], "tune.metric", "dml reports"),
        (["data.val_fraction=0"], "data.val_fraction", "validation split"),
        (["tune.resources.gpu=-1"], "tune.resources.gpu", "greater than or equal to 0"),
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
    ("overrides", "graph", "compile"),
    [
        ([], True, None),  # FFL on a GPU: the whole step as one graph, no torch.compile
        (["train.compile=default"], True, "default"),  # fused kernels inside the graph
        (["method.name=dualnet", "model.shared=auto"], False, None),  # Python-side alternation: eager
        (["train.precision=fp16"], False, "reduce-overhead"),  # the loss scaler syncs: torch.compile's graphs
        (["train.compile=reduce-overhead"], False, "reduce-overhead"),
        (["train.cuda_graph=false"], False, "reduce-overhead"),
    ],
)
def test_auto_speed_settings_on_a_gpu(overrides, graph, compile):
    import torch

    from pipeline.stages import compile_mode, cuda_graph

    p = validate(apply_overrides(tiny_params(train={"precision": "bf16"}), overrides))
    cuda = torch.device("cuda")
    assert (cuda_graph(p, cuda), compile_mode(p, cuda)) == (graph, compile)


def test_cpu_runs_are_eager():
    import torch

    from pipeline.stages import compile_mode, cuda_graph

    p = validate(tiny_params())
    assert (cuda_graph(p, torch.device("cpu")), compile_mode(p, torch.device("cpu"))) == (False, None)
