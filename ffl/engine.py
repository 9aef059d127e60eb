"""The training loop. It knows methods only through their contract (forward, loss, param_groups,
and for methods with several updates per batch, train_step).

Per epoch: one pass over the training loader, loss terms and correct counts summed on the device and
read once at the end (no per-step host sync); a check that every term stayed finite; validation
on the held-out split; a checkpoint written atomically; then the callbacks.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ffl import atomic, distributed
from ffl.callbacks import Callback
from ffl.checkpoint import CheckpointError, reading, safe_load
from ffl.config_diff import described, differences
from ffl.metrics import evaluate, topk_correct
from ffl.precision import autocast, resolve_precision
from ffl.step_graph import StepGraph
from ffl.step_mode import COMPILE_MODES_WITH_GRAPHS, step_mode

CHECKPOINT_FIELDS = {
    "format": str,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "epoch": int,
    "history": list,
    "rng": dict,
    "config": dict,
}
CHECKPOINT_FORMAT = "ffl-checkpoint-v1"


class NonFiniteLoss(RuntimeError):
    def __init__(self, epoch: int, term: str, value: float, step: int):
        super().__init__(
            f"loss term {term!r} became non-finite at step {step} of epoch {epoch} (epoch mean {value}); "
            "the last good checkpoint is kept"
        )
        self.epoch, self.term, self.value, self.step = epoch, term, value, step


@dataclass
class TrainConfig:
    epochs: int = 300
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # auxiliary modules (fusion module, gate) take their method's own
    milestones: list[int] = field(default_factory=lambda: [150, 225])
    gamma: float = 0.1
    precision: str = "auto"
    # torch.compile mode of the step's forward, loss and statistics: None (eager), "default",
    # "reduce-overhead" (CUDA graphs over forward and backward: on a GPU small CIFAR nets are
    # bound by kernel launches, which graphs remove), "max-autotune".
    compile: str | None = None
    # Capture the whole step (forward, loss, backward, optimiser, metric sums) as one CUDA graph
    # and replay it: one launch per step. CUDA only; fp32/bf16; methods whose loss terms are the
    # same every step (all but DualNet). Combines with compile "default" (fused kernels inside).
    cuda_graph: bool = False


class EpochGroup:
    """Device-side sums of one set of named per-step values, and the first step each went non-finite."""

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = names
        self.sums = torch.zeros(len(names), device=device)
        self.first_bad = torch.full((len(names),), -1, dtype=torch.long, device=device)
        self.count = 0  # samples, counted on the host


class EpochSums:
    """The epoch's metric sums, one group per set of term names (DualNet's change between steps).

    Everything is updated in place: a captured step graph keeps adding into the same tensors.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.groups: dict[tuple[str, ...], EpochGroup] = {}
        self.step = torch.zeros((), dtype=torch.long, device=device)

    def save(self) -> dict:
        return {
            "step": self.step.clone(),
            "groups": {k: (g.sums.clone(), g.first_bad.clone()) for k, g in self.groups.items()},
        }

    @torch.no_grad()
    def restore(self, saved: dict) -> None:
        """Back to ``save()``'s state, in place; groups created since start empty."""
        self.step.copy_(saved["step"])
        for names, g in self.groups.items():
            if names in saved["groups"]:
                g.sums.copy_(saved["groups"][names][0])
                g.first_bad.copy_(saved["groups"][names][1])
            else:
                g.sums.zero_()
                g.first_bad.fill_(-1)

    def reset(self) -> None:
        self.step.zero_()
        for g in self.groups.values():
            g.sums.zero_()
            g.first_bad.fill_(-1)
            g.count = 0

    def add(self, names: tuple[str, ...], values: torch.Tensor) -> EpochGroup:
        group = self.groups.get(names)
        if group is None:
            group = self.groups[names] = EpochGroup(names, self.device)
        group.sums.add_(values)
        newly_bad = (group.first_bad < 0) & ~torch.isfinite(values)
        group.first_bad.copy_(torch.where(newly_bad, self.step, group.first_bad))
        self.step.add_(1)
        return group

    @staticmethod
    @torch.no_grad()
    def _across_ranks(groups: list[EpochGroup]) -> None:
        """Every rank's sums and counts added up, in place; a term's first non-finite step is the
        earliest any rank saw (every rank has the same groups: they take the same steps)."""
        counts = torch.tensor([float(g.count) for g in groups], device=groups[0].sums.device)
        total = distributed.sum_across(torch.cat([*(g.sums for g in groups), counts]))
        bad = torch.cat([g.first_bad.float() for g in groups])
        # The earliest bad step is the largest negated one; -1 (never) is kept below every step.
        negated = distributed.max_across(torch.where(bad >= 0, -bad, torch.full_like(bad, -(2**40))))
        first = torch.where(negated > -(2**40), -negated, torch.full_like(negated, -1.0))
        i = 0
        for g, count in zip(groups, total[-len(groups) :].tolist()):
            k = len(g.names)
            g.sums.copy_(total[i : i + k])
            g.first_bad.copy_(first[i : i + k])
            g.count = int(count)
            i += k

    def read(self, epoch: int) -> dict[str, float]:
        """Means of the losses, top-1 errors in %; raises NonFiniteLoss naming the first term that went bad."""
        groups = [g for g in self.groups.values() if g.count]
        if not groups:
            return {}
        if distributed.current().distributed:
            self._across_ranks(groups)
        flat = torch.cat([torch.cat([g.sums, g.first_bad.float()]) for g in groups]).tolist()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        first_bad: list[tuple[int, str]] = []
        offset = 0
        for g in groups:
            k = len(g.names)
            for i, name in enumerate(g.names):
                value, bad_step = flat[offset + i], int(flat[offset + k + i])
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + g.count
                if bad_step >= 0 and name.startswith("train/loss/") and name != "train/loss/total":
                    first_bad.append((bad_step, name))
            offset += 2 * k
        if first_bad:
            step, name = min(first_bad)
            raise NonFiniteLoss(epoch, name.removeprefix("train/loss/"), sums[name] / counts[name], step)
        return {
            name: 100.0 - 100.0 * total / counts[name] if name.startswith("train/top1_err/") else total / counts[name]
            for name, total in sums.items()
        }


def check_step(config: TrainConfig, method, device: torch.device, precision: str, processes: int = 1) -> None:
    """The configured step mode is one ``step_mode`` accepts for this method, device, precision and
    number of processes (else SettingError, a ValueError)."""
    step_mode(
        type(method), method.settings, device.type, precision, config.compile or "off", config.cuda_graph, processes
    )


def multistep_factor(milestones: list[int], gamma: float):
    def factor(epoch: int) -> float:
        return gamma ** sum(epoch >= m for m in milestones)

    return factor


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_resumable(path: str | Path, ckpt: dict, run_config: dict) -> None:
    """A run of ``run_config`` can resume from checkpoint ``ckpt`` (read from ``path``): its format
    and its run's config are this one's (CheckpointError naming what differs)."""
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format']!r}, expected {CHECKPOINT_FORMAT!r}")
    diff = differences(ckpt["config"], run_config)
    if diff:
        raise CheckpointError(
            f"{path}: checkpoint of another configuration ({described(diff)}); "
            "delete it or train with --fresh to start over"
        )


def read_checkpoint(path: str | Path, run_config: dict) -> dict:
    """The checkpoint at ``path``, read safely and refused unless a run of ``run_config`` can resume from it."""
    ckpt = safe_load(path, CHECKPOINT_FIELDS)
    check_resumable(path, ckpt, run_config)
    return ckpt


class Trainer:
    def __init__(
        self,
        method,
        train_loader,
        config: TrainConfig,
        val_loader=None,
        callbacks: list[Callback] = (),
        checkpoint_path: str | Path | None = None,
        run_config: dict | None = None,
    ):
        views = method.train_views(method.num_subnets, method.settings)
        if getattr(train_loader, "views", 1) != views:
            raise ValueError(
                f"{method.name} trains on {views} augmented views of each batch; the training loader gives "
                f"{getattr(train_loader, 'views', 1)} (build it with views={views})"
            )
        self.method = method
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.config = config
        self.device = train_loader.device
        self.precision = resolve_precision(config.precision, self.device)
        self.callbacks = list(callbacks)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        # What a checkpoint must match to be resumed: the caller's config (the pipeline passes every
        # param that changes the result) or, for library users, the engine's and the method's.
        self.run_config = run_config or {"train": asdict(config), "method": method.spec()}
        method.to(self.device)
        if train_loader.channels_last:
            method.to(memory_format=torch.channels_last)
        # Under torchrun (ffl.distributed): DDP averages the ranks' gradients in the backward pass
        # and hands rank 0's batch-norm buffers to every rank at each forward. Methods that choose
        # per step which networks learn (DualNet) leave some parameters without gradients.
        self.ranks = distributed.current()
        self.model = (
            torch.nn.parallel.DistributedDataParallel(
                method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=method.partial_updates,
                gradient_as_bucket_view=True,
            )
            if self.ranks.distributed
            else method
        )
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.SGD(
            method.param_groups(config.weight_decay),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            **({"fused": True} if fused else {"foreach": True}),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, multistep_factor(config.milestones, config.gamma)
        )
        late = [m for m in config.milestones if m >= config.epochs]
        if late:
            # The paper's [150, 225] with a short run: the lr would never drop. Said, not refused.
            warnings.warn(
                f"TrainConfig.milestones {late} lie at or beyond the last epoch ({config.epochs} epochs): the lr never "
                "drops there; milestones are epoch numbers",
                stacklevel=2,
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        check_step(config, method, self.device, self.precision, self.ranks.world)
        # Forward, loss and the step's statistics compile as one function: with CUDA graphs
        # (reduce-overhead) all of it replays as one launch; the epoch enters as a tensor.
        self.step_fn = torch.compile(self._forward_loss, mode=config.compile) if config.compile else self._forward_loss
        self.compiled_graphs = config.compile in COMPILE_MODES_WITH_GRAPHS and self.device.type == "cuda"
        self.sums = EpochSums(self.device)
        self.epoch_arg = torch.zeros((), device=self.device)
        self.step_graph = (
            StepGraph(
                self._graph_step, method, self.optimizer, self.sums.save, self.sums.restore, phase=method.step_phase
            )
            if config.cuda_graph
            else None
        )
        self.history: list[dict] = []
        self.start_epoch = 0

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self, next_epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": next_epoch,
            "history": self.history,
            "rng": rng_state(),
            "config": self.run_config,
        }

    def save_checkpoint(self, next_epoch: int) -> None:
        if self.checkpoint_path is not None and self.ranks.main:
            atomic.torch_save(self.state_dict(next_epoch), self.checkpoint_path)

    def load_checkpoint(self, path: str | Path) -> None:
        self._apply_checkpoint(path, safe_load(path, CHECKPOINT_FIELDS))

    def _apply_checkpoint(self, path: str | Path, ckpt: dict) -> None:
        check_resumable(path, ckpt, self.run_config)
        with reading(path):
            if not 0 <= ckpt["epoch"] <= self.config.epochs or len(ckpt["history"]) != ckpt["epoch"]:
                raise ValueError(f"epoch {ckpt['epoch']} with {len(ckpt['history'])} epochs of history")
            if not all(isinstance(m, dict) and "epoch" in m for m in ckpt["history"]):
                raise ValueError("its history is not a list of epoch metrics")
            self.method.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
        self.start_epoch = ckpt["epoch"]
        self.history = ckpt["history"]

    def resume_if_possible(self) -> bool:
        if self.checkpoint_path is None:
            return False
        if not self.ranks.distributed:
            if not self.checkpoint_path.exists():
                return False
            self.load_checkpoint(self.checkpoint_path)
            return True
        # Rank 0 reads the checkpoint it wrote and hands it to every rank: other nodes need not see
        # its disk, and all ranks resume from the same state (or all refuse with the same reason).
        found = None
        if self.ranks.main and self.checkpoint_path.exists():
            try:
                found = safe_load(self.checkpoint_path, CHECKPOINT_FIELDS)
            except CheckpointError as e:
                found = e
        found = distributed.from_main(found)
        if isinstance(found, CheckpointError):
            raise found
        if found is None:
            return False
        self._apply_checkpoint(self.checkpoint_path, found)
        return True

    # -- the loop ----------------------------------------------------------------------------
    def _forward_loss(self, x, y, epoch):
        # Autocast's weight-cast cache would be frozen into a captured graph: off when capturing.
        with autocast(self.device, self.precision, cache=self.step_graph is None):
            outputs = self.model(x)
        terms = self.method.loss(outputs, y, epoch)
        total = torch.stack(list(terms.values())).sum()
        return total, terms, self._correct(outputs, y)

    @staticmethod
    def _correct(outputs, y) -> dict[str, torch.Tensor]:
        """Top-1 hits of every classifier on the batch."""
        return {name: topk_correct(z.detach(), y, ks=(1,))[0] for name, z in outputs.items() if name[0] != "_"}

    # -- what an own-step method (several updates per batch) gets as ``ctx`` ------------------
    def autocast(self):
        return autocast(self.device, self.precision, cache=self.step_graph is None)

    def update(self, loss: torch.Tensor) -> None:
        """Backward, an optimiser step over the parameters that received gradients, gradients cleared."""
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step()
        self.optimizer.zero_grad(set_to_none=True)

    def _own_step(self, x, y, epoch):
        outputs, terms = self.method.train_step(x, y, epoch, self)
        total = torch.stack([v.detach() for v in terms.values()]).sum()
        return total, terms, self._correct(outputs, y)

    def _step(self, x, y, epoch) -> EpochGroup:
        """One optimisation step, its loss terms and correct counts added to the epoch's device-side sums."""
        if self.method.own_step:
            total, terms, correct = self._own_step(x, y, epoch)
        else:
            total, terms, correct = self.step_fn(x, y, epoch)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.after_step()
        totals = self._totals(total, terms)
        names = (*(f"train/loss/{k}" for k in (*terms, *totals)), *(f"train/top1_err/{k}" for k in correct))
        # Loss terms are batch means, weighted by the batch size here; errors are summed as correct counts.
        losses = torch.stack([v.detach().float() for v in (*terms.values(), *totals.values())])
        values = torch.cat([losses * len(y), torch.stack([c.float() for c in correct.values()])])
        return self.sums.add(names, values)

    @staticmethod
    def _totals(total: torch.Tensor, terms: dict) -> dict[str, torch.Tensor]:
        """The step's summed loss, as the curves name it."""
        return {"total": total}

    def _graph_step(self, x, y) -> EpochGroup:
        return self._step(x, y, self.epoch_arg)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        method, loader = self.method, self.train_loader
        method.train()
        method.set_epoch(epoch, self.config.epochs)
        loader.set_epoch(epoch)
        self.sums.reset()
        # The epoch reaches the loss as a device tensor on every path: compiled and captured steps
        # read it instead of being rebuilt each epoch, and eager runs compute the same fp32 ramp-up.
        self.epoch_arg.fill_(epoch)
        for step, (x, y) in enumerate(loader):
            if self.step_graph is not None:
                group = self.step_graph(x, y)
            else:
                if self.compiled_graphs:
                    # The previous step's graph outputs are consumed: let the graph replay over them.
                    torch.compiler.cudagraph_mark_step_begin()
                self.optimizer.zero_grad(set_to_none=True)
                group = self._step(x, y, self.epoch_arg)
            group.count += len(y)
            method.end_step()
            for cb in self.callbacks:
                cb.on_step(self, epoch, step)
        return self.sums.read(epoch)  # the epoch's one host sync

    @torch.no_grad()
    def _same_buffers(self) -> None:
        """Rank 0's batch-norm statistics on every rank before evaluating (each rank has added its
        own last batch to them since DDP's last broadcast): the ranks evaluate one model."""
        if self.ranks.distributed:
            for b in self.method.buffers():
                torch.distributed.broadcast(b, 0)

    def fit(self) -> list[dict]:
        for cb in self.callbacks:
            cb.on_train_start(self, self.start_epoch, list(self.history))
        for epoch in range(self.start_epoch, self.config.epochs):
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            metrics = self.train_epoch(epoch)
            self.scheduler.step()
            metrics["lr"] = lr
            if self.val_loader is not None and len(self.val_loader):
                self._same_buffers()
                for name, errs in evaluate(self.method, self.val_loader, self.precision).items():
                    metrics[f"val/top1_err/{name}"] = errs["top1_err"]
            metrics["epoch"] = epoch
            metrics["time/epoch_s"] = time.perf_counter() - t0
            self.history.append(metrics)
            self.save_checkpoint(epoch + 1)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, metrics)
        for cb in self.callbacks:
            cb.on_train_end(self, self.history)
        return self.history
