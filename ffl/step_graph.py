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
- Inputs are copied into static buffers; the epoch is a 0-d tensor the step reads. A batch of
  another shape (the last, smaller batch of an epoch under the paper's protocol) gets a graph of
  its own, warmed up and captured the first time it comes (the epoch's sums are kept across it).
- A method whose steps differ by phase (DualNet: which network learns) gets one graph per phase,
  warmed up and captured the first time each phase comes.
- The learning rate is a constant of the captured optimiser kernels: the graph is captured again
  when the scheduler changes it (twice in the paper's schedule), reusing the warm state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class _Captured:
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.static_x, self.static_y = x.clone(), y.clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key = None
        self.result = None


class StepGraph:
    def __init__(
        self,
        step: Callable,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        save_extra: Callable[[], object] = lambda: None,
        restore_extra: Callable[[object], None] = lambda state: None,
        warmup_steps: int = 3,
        phase: Callable[[], object] = lambda: None,
    ):
        """``step(x, y)`` runs one training step on the given tensors, gradients starting at None;
        ``save_extra()`` / ``restore_extra(state)`` keep whatever else a step changes (the epoch's
        metric sums) as it was before the warm-up steps; ``phase()`` names the kind of step that comes
        next (the method's ``step_phase``)."""
        self.step = step
        self.phase = phase
        self.save_extra, self.restore_extra = save_extra, restore_extra
        self.model = model
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.captured: dict[tuple, _Captured] = {}

    def _lrs(self) -> tuple:
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)

    def _snapshot(self) -> dict:
        model = {k: v.detach().clone() for k, v in self.model.state_dict().items() if isinstance(v, torch.Tensor)}
        momentum = {
            p: s["momentum_buffer"].clone()
            for p, s in self.optimizer.state.items()
            if s.get("momentum_buffer") is not None
        }
        return {"model": model, "momentum": momentum, "extra": self.save_extra()}

    @torch.no_grad()
    def _restore(self, snap: dict) -> None:
        for k, v in self.model.state_dict().items():
            if k in snap["model"]:
                v.copy_(snap["model"][k])
        for p, s in self.optimizer.state.items():
            buf = s.get("momentum_buffer")
            if buf is not None:
                buf.copy_(snap["momentum"][p]) if p in snap["momentum"] else buf.zero_()
        self.restore_extra(snap["extra"])

    def _warm_up(self, c: _Captured) -> None:
        for group in self.optimizer.param_groups:
            if group.get("dampening", 0) != 0:
                raise ValueError("a captured SGD step needs dampening 0 (its first momentum update is replayed)")
        snap = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self.step(c.static_x, c.static_y)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(snap)

    def _capture(self, c: _Captured) -> None:
        if c.graph is not None:
            c.graph.reset()  # frees the old graph's memory before the new capture
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph
        c.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(c.graph):
            c.result = self.step(c.static_x, c.static_y)
        c.key = self._lrs()

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        """Copies the batch in and replays; returns what ``step`` returned when it was captured."""
        shape = (tuple(x.shape), x.stride(), tuple(y.shape), self.phase())
        c = self.captured.get(shape)
        if c is None:
            c = self.captured[shape] = _Captured(x, y)
            self._warm_up(c)
        c.static_x.copy_(x)
        c.static_y.copy_(y)
        if c.graph is None or c.key != self._lrs():
            self._capture(c)
        c.graph.replay()
        return c.result
