"""K runs trained as one model (ffl.stacked): each run ends with the weights and the curves it gets
trained alone, for every method that declares itself stackable; the others are refused."""

import numpy as np
import pytest
import torch

from ffl.data import Augment, DeviceLoader, Split
from ffl.engine import TrainConfig, Trainer
from ffl.methods import METHODS, DualNet
from ffl.stacked import StackedBatches, StackedEval, StackedRuns, StackedTrainer, run_history, unstack

SEEDS = (3, 1, 4)
STACKABLE = [name for name, cls in METHODS.items() if cls.stackable]


def split(seed: int, n: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8), rng.integers(0, 4, n))


def build(name: str, seed: int, **settings):
    torch.manual_seed(seed)
    cls = METHODS[name]
    return cls(
        ["resnet8"] * cls.default_subnets if cls.default_subnets > 1 else ["resnet8"], 4, settings=settings or None
    )


def loaders(method, seed, channels_last):
    views = method.train_views(method.num_subnets, method.settings)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, channels_last=channels_last)
    train = DeviceLoader(split(0, 48), 16, augment=Augment(), shuffle=True, seed=seed, views=views, **kw)
    return train, DeviceLoader(split(1, 20), 8, **kw)


# Two epochs of three steps, the lr dropped for the second, a validation pass after each. Longer runs
# of these tiny networks amplify the kernels' rounding (a few 1e-7 after one step) past any
# tolerance that would still catch a wrong step.
CONFIG = dict(epochs=2, milestones=[1], lr=0.02, precision="fp32")


def alone(name, seed, channels_last=False, **settings):
    method = build(name, seed, **settings)
    train, val = loaders(method, seed, channels_last)
    history = Trainer(method, train, TrainConfig(**CONFIG), val).fit()
    return method, history


def stacked(name, channels_last=False, **settings):
    methods = [build(name, s, **settings) for s in SEEDS]
    pairs = [loaders(m, s, channels_last) for m, s in zip(methods, SEEDS)]
    model = StackedRuns(methods)
    trainer = StackedTrainer(
        model, StackedBatches([t for t, _ in pairs]), TrainConfig(**CONFIG), StackedEval(pairs[0][1], len(SEEDS))
    )
    history = trainer.fit()
    return unstack(model, [build(name, 0, **settings) for _ in SEEDS]), history


@pytest.mark.parametrize("name", STACKABLE)
def test_each_stacked_run_trains_as_it_does_alone(name):
    """Tolerance 1e-4: a grouped convolution sums in another order than three separate ones
    (measured on a 2-core EPYC: up to 5e-5 in a weight after the six steps)."""
    settings = {"update": "joint"} if name == "dml" else {}
    if name == "dualnet":
        settings = {"finetune_fraction": 0.5}  # the second epoch is the joint fine-tuning: every phase
    runs, history = stacked(name, **settings)
    for i, seed in enumerate(SEEDS):
        method, own = alone(name, seed, **settings)
        mine = run_history(history, i)
        assert len(mine) == len(own)
        for a, b in zip(mine, own):
            assert set(a) == set(b) - {"time/epoch_s"} | {"time/epoch_s"} & set(a)
            for key in b:
                if key != "time/epoch_s":
                    assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), (seed, a["epoch"], key)
        theirs = runs[i].state_dict()
        for key, value in method.state_dict().items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(theirs[key], value, rtol=1e-4, atol=1e-4, msg=f"{name} seed {seed} {key}")
            else:
                assert theirs[key] == value, key


def test_channels_last_stacks_too():
    (run, *_), _ = stacked("ffl", channels_last=True)
    method, _ = alone("ffl", SEEDS[0], channels_last=True)
    for key, value in method.state_dict().items():
        torch.testing.assert_close(run.state_dict()[key], value, rtol=1e-4, atol=1e-4, msg=key)


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("one", {}, "one combines its sub-networks beyond element-wise sums"),
        ("okddip", {}, "okddip combines its sub-networks"),
        ("pcl", {}, "pcl combines its sub-networks"),
        ("dml", {"update": "alternating"}, "dml's step updates the networks several times per batch"),
    ],
)
def test_methods_that_would_mix_the_runs_are_refused(name, settings, message):
    with pytest.raises(ValueError, match=message):
        StackedRuns([build(name, s, **settings) for s in SEEDS[:2]])


def test_runs_of_different_networks_are_refused():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="one method with the same networks and settings"):
        StackedRuns([build("ffl", 0), DualNet(["resnet8", "resnet8"], 4)])
    with pytest.raises(ValueError, match="one method with the same networks and settings"):
        StackedRuns([build("ffl", 0), build("ffl", 0, temperature=2.0)])
