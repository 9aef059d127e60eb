"""The whole-step CUDA graph trains exactly like the eager loop. Needs a GPU: skipped elsewhere."""

import numpy as np
import pytest
import torch

from ffl.callbacks import Callback
from ffl.data import Augment, DeviceLoader, Split
from ffl.engine import NonFiniteLoss, TrainConfig, Trainer
from ffl.errors import SettingError
from ffl.methods import DML, FFL, KDCL, LMCL, MCL, ONE, PCL, DualNet, OKDDip

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _deterministic_cudnn():
    # Eager cuDNN picks non-deterministic backward kernels: two eager runs already differ at 1e-6.
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def loader(seed=0, keep_last=False, views=1):
    rng = np.random.default_rng(seed)
    n = 250 if keep_last else 256  # 250: three batches of 64 and a last one of 58
    split = Split(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
    return DeviceLoader(
        split,
        64,
        (0.5,) * 3,
        (0.25,) * 3,
        CUDA,
        augment=Augment(),
        shuffle=True,
        drop_last=not keep_last,
        seed=seed,
        views=views,
    )


def train(
    method_cls=FFL, epochs=3, checkpoint=None, resume=False, callbacks=(), concurrent=False, keep_last=False, **config
):
    torch.manual_seed(0)
    settings = config.pop("settings", None)
    method = method_cls(["resnet8"] * max(2, method_cls.subnets[0]), 10, settings=settings)
    method.net.concurrent_branches = concurrent
    cfg = dict(epochs=epochs, milestones=[2], lr=0.05, precision="fp32")  # the milestone forces a recapture
    cfg.update(config)
    data = loader(keep_last=keep_last, views=method.train_views(method.num_subnets, method.settings))
    trainer = Trainer(method, data, TrainConfig(**cfg), callbacks=callbacks, checkpoint_path=checkpoint)
    if resume:
        trainer.resume_if_possible()
    history = trainer.fit()
    state = method.state_dict()
    return history, {k: v.detach().float().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def assert_same_run(a, b):
    """Replaying the captured step runs the eager step's kernels on the same data: with cuDNN
    deterministic the runs agree to the last bit (measured on an H200); the margin allows for
    reduction-order differences on other GPUs, far below what a stale or skipped step would cause."""
    (hist_a, weights_a), (hist_b, weights_b) = a, b
    assert len(hist_a) == len(hist_b)
    for epoch, (ha, hb) in enumerate(zip(hist_a, hist_b)):
        rel = 1e-6 if epoch == 0 else 1e-4
        for key in (k for k in ha if k.startswith("train/")):
            assert ha[key] == pytest.approx(hb[key], rel=rel, abs=rel), (epoch, key)
    for key in weights_a:  # tensors, and extra state such as DualNet's turn
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=1e-4, atol=1e-4, msg=key)


@pytest.mark.parametrize("method_cls", [FFL, DML, ONE])
def test_graphed_step_trains_like_the_eager_loop(method_cls):
    assert_same_run(train(method_cls, cuda_graph=True), train(method_cls, cuda_graph=False))


@pytest.mark.parametrize("method_cls", [OKDDip, KDCL, PCL, MCL])
def test_graphed_step_of_the_later_methods_trains_like_the_eager_loop(method_cls):
    """Several augmented views (KDCL, PCL), loss-only outputs (OKDDip, MCL's embeddings), PCL's
    temporal means moved after every optimiser step inside the graph, and MCL's fp32 contrastive
    terms with their masks built on the device."""
    assert_same_run(train(method_cls, cuda_graph=True), train(method_cls, cuda_graph=False))


def test_lmcl_trains_eagerly_on_cuda_with_its_meta_steps():
    """L-MCL's meta step is decided on the host: auto takes the eager step, true is refused in one
    line, and a run with a meta step at every step learns (its pair weights move) on the GPU."""
    with pytest.raises(SettingError, match="decides each step in Python"):
        train(LMCL, cuda_graph=True)
    history, weights = train(LMCL, cuda_graph="auto", settings=LMCL.Settings(meta_every=1))
    assert all(np.isfinite(h["train/loss/total"]) for h in history)
    torch.manual_seed(0)
    start = LMCL(["resnet8"] * 2, 10).state_dict()
    assert not torch.equal(weights["pair_weights.proj.0.0.weight"].cpu(), start["pair_weights.proj.0.0.weight"])


def test_dualnet_replays_one_graph_per_phase_like_the_eager_loop():
    """The networks take turns (two graphs) and the last of three epochs is the joint fine-tuning
    (a third); the turn carries over epochs as it does eagerly."""
    settings = DualNet.Settings(finetune_fraction=0.34)
    graphed = train(DualNet, cuda_graph=True, settings=settings)
    assert_same_run(graphed, train(DualNet, cuda_graph=False, settings=settings))
    assert {"train/loss/ce_sub0", "train/loss/ce_sub1"} <= set(graphed[0][-1])


@pytest.mark.parametrize("method_cls", [FFL, DML])
def test_the_last_partial_batch_of_the_paper_protocol_replays_its_own_graph(method_cls):
    assert_same_run(
        train(method_cls, cuda_graph=True, keep_last=True), train(method_cls, cuda_graph=False, keep_last=True)
    )


@pytest.mark.parametrize("graph", [False, True])
def test_branches_on_their_own_streams_train_like_sequential_ones(graph):
    assert_same_run(train(concurrent=True, cuda_graph=graph), train(cuda_graph=False))


def test_graphed_step_follows_the_learning_rate_schedule():
    history, _ = train(cuda_graph=True)
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.05, 0.005])


class StopAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_graphed_run_resumes_exactly(tmp_path):
    full = train(cuda_graph=True)
    with pytest.raises(KeyboardInterrupt):
        train(cuda_graph=True, checkpoint=tmp_path / "last.pt", callbacks=[StopAfter(0)])
    assert_same_run(train(cuda_graph=True, checkpoint=tmp_path / "last.pt", resume=True), full)


def test_graphed_bf16_with_compiled_kernels_learns():
    history, _ = train(cuda_graph=True, precision="bf16", compile="default", epochs=4, milestones=[])
    assert history[-1]["train/loss/total"] < history[0]["train/loss/total"]


def test_graphed_step_reports_the_first_non_finite_term():
    with pytest.raises(NonFiniteLoss) as eager:
        train(cuda_graph=False, lr=1e8, epochs=2)
    with pytest.raises(NonFiniteLoss) as graphed:
        train(cuda_graph=True, lr=1e8, epochs=2)
    assert (graphed.value.term, graphed.value.epoch, graphed.value.step) == (
        eager.value.term,
        eager.value.epoch,
        eager.value.step,
    )


def test_stacked_seeds_replay_as_one_graph_and_train_as_each_run_alone(monkeypatch):
    """K runs as one model (ffl.stacked) under the whole-step graph: each run ends where it ends
    trained alone. TF32 off: grouped and separate convolutions would round differently in it."""
    from ffl.stacked import StackedBatches, StackedEval, StackedRuns, StackedTrainer, run_history, unstack

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    seeds = (0, 1, 2)
    cfg = dict(epochs=2, milestones=[1], lr=0.02, precision="fp32", cuda_graph=True)

    def built(seed):
        torch.manual_seed(seed)
        return FFL(["resnet8", "resnet8"], 10)

    def data(seed):
        return loader(seed=seed)

    alone = []
    for seed in seeds:
        method = built(seed)
        history = Trainer(method, data(seed), TrainConfig(**cfg), data(9)).fit()
        alone.append((method, history))
    model = StackedRuns([built(s) for s in seeds])
    history = StackedTrainer(
        model, StackedBatches([data(s) for s in seeds]), TrainConfig(**cfg), StackedEval(data(9), len(seeds))
    ).fit()
    runs = unstack(model, [built(0).to(CUDA) for _ in seeds])
    for i, (method, own) in enumerate(alone):
        for a, b in zip(run_history(history, i), own):
            for key in (k for k in b if k.startswith(("train/", "val/"))):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), (i, key)
        for key, value in method.state_dict().items():
            torch.testing.assert_close(runs[i].state_dict()[key], value, rtol=1e-4, atol=1e-4, msg=key)
