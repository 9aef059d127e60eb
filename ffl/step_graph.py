"""The whole training step as one CUDA graph: forward, loss, backward, optimiser step, metric sums.

Small CIFAR networks leave an H200 idle: eager PyTorch spends ~20 ms per step launching ~1,000
kernels of a few microseconds each (docs/benchmarks.md). Graphing the forward and backward alone
(torch.compile's reduce-overhead) still leaves the optimiser, the metric bookkeeping and autograd's
host work per step; capturing everything makes a step one launch, following PyTorch's
whole-network capture recipe (docs: CUDA semantics, "Whole-network capture").

What capture needs, and how it is kept exact:
- Lazy state (cuDNN handles, autograd buffers, momentum buffers, compiled kernels) must exist
  before capture, so a few warm-up steps run first, on a side stream. They change the weights,
  batch-norm statistics and momentum, so every tensor of the model and optimiser is snapshotted
  before and copied back (in place: the graph reads fixed addresses) after. A momentum buffer that
  did not exist is zeroed, which is the same first update for SGD without dampening.
- Inputs are copied into static buffers; the epoch is a 0-d tensor the step reads.
- The learning rate is a constant of the captured optimiser kernels: the graph is captured again
  when the scheduler changes it (twice in the paper's schedule), reusing the warm state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class StepGraph:
    def __init__(
        self,
        step: Callable,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        after_warmup: Callable[[], None] = lambda: None,
        warmup_steps: int = 3,
    ):
        """``step(x, y)`` runs one training step on the given tensors, gradients starting at None;
        ``after_warmup`` resets whatever else the warm-up steps touched (the epoch's metric sums)."""
        self.step = step
        self.after_warmup = after_warmup
        self.model = model
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key = None
        self.static_x = self.static_y = None
        self.result = None

    def _lrs(self) -> tuple:
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)

    def _snapshot(self) -> dict:
        model = {k: v.detach().clone() for k, v in self.model.state_dict().items() if isinstance(v, torch.Tensor)}
        momentum = {
            p: s["momentum_buffer"].clone()
            for p, s in self.optimizer.state.items()
            if s.get("momentum_buffer") is not None
        }
        return {"model": model, "momentum": momentum}

    @torch.no_grad()
    def _restore(self, snap: dict) -> None:
        for k, v in self.model.state_dict().items():
            if k in snap["model"]:
                v.copy_(snap["model"][k])
        for p, s in self.optimizer.state.items():
            buf = s.get("momentum_buffer")
            if buf is not None:
                buf.copy_(snap["momentum"][p]) if p in snap["momentum"] else buf.zero_()

    def _warm_up(self) -> None:
        for group in self.optimizer.param_groups:
            if group.get("dampening", 0) != 0:
                raise ValueError("a captured SGD step needs dampening 0 (its first momentum update is replayed)")
        snap = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self.step(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(snap)
        self.after_warmup()

    def _capture(self) -> None:
        if self.graph is not None:
            self.graph.reset()  # frees the old graph's memory pool before the new capture
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.result = self.step(self.static_x, self.static_y)
        self.key = self._lrs()

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        """Copies the batch in and replays; returns what ``step`` returned when it was captured."""
        if self.static_x is None:
            self.static_x, self.static_y = x.clone(), y.clone()
            self._warm_up()
        if self.static_x.shape != x.shape or self.static_x.stride() != x.stride():
            raise ValueError(
                f"a captured step takes batches of one shape, got {tuple(x.shape)} after "
                f"{tuple(self.static_x.shape)} (train with drop_last)"
            )
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if self.graph is None or self.key != self._lrs():
            self._capture()
        self.graph.replay()
        return self.result
