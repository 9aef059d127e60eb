"""One run over several processes (PyTorch DDP under torchrun): who this process is, and the rules
that keep N processes training on exactly the batches one process would.

The rule for the batch: ``train.batch_size`` is the global batch. Every rank walks the same
global order (the seed and epoch decide it, as in one process) and takes its contiguous part of
each global batch (``shard``), so the union of the ranks' batches is the one-process batch, the
gradient DDP averages is the one-process gradient (up to batch-norm statistics, which each rank
computes over its own part, as the authors' DataParallel did), and the lr and its schedule are
the params' as they stand.

``torch.utils.data.DistributedSampler`` is not used: it interleaves the ranks' samples and pads the
last batch with repeated samples, so an N-process epoch would not be the one-process epoch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and the model."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched() -> Ranks | None:
    """The ranks torchrun (or any launcher setting its environment variables) started this process
    as; None outside one."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank} is not one of WORLD_SIZE={world} processes")
    return Ranks(rank, world, local)


def _several() -> bool:
    """A process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current() -> Ranks:
    """This process's place in the initialised process group (one process: rank 0 of 1)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Ranks()


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK) when training on CUDA; CPUs are shared."""
    if device.type == "cuda" and ranks.distributed:
        if ranks.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process {ranks.local_rank} on this machine has no GPU of its own ({torch.cuda.device_count()} here)"
            )
        return torch.device("cuda", ranks.local_rank)
    return device


def peer_stopped(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another process of the run went away."""
    if isinstance(e, (dist.DistBackendError, dist.DistNetworkError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer")
    )


@contextmanager
def process_group(device: torch.device, ranks: Ranks):
    """The process group of a torchrun run for the duration (NCCL on GPUs, gloo on CPUs); a
    no-op for one process."""
    if not ranks.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(start: int, stop: int, ranks: Ranks) -> tuple[int, int]:
    """This rank's contiguous part of positions [start, stop): the first (stop - start) % world ranks
    take one more (``numpy.array_split``'s rule)."""
    n = stop - start
    base, extra = divmod(n, ranks.world)
    first = start + ranks.rank * base + min(ranks.rank, extra)
    return first, first + base + (ranks.rank < extra)


def usable_batches(size: int, batch_size: int, drop_last: bool, world: int) -> int:
    """How many global batches every rank steps through: a last partial batch smaller than the
    number of ranks would leave a rank without samples (and DDP needs every rank to step), so it
    is dropped."""
    full, rest = divmod(size, batch_size)
    return full + (not drop_last and rest >= max(world, 1))


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (in place; itself for one process)."""
    if _several():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_across(t: torch.Tensor) -> torch.Tensor:
    if _several():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def from_main(obj):
    """Rank 0's ``obj`` on every rank (pickled through the process group; itself for one process)."""
    if not _several():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def per_rank_batch_norm(module: torch.nn.Module, world: int) -> None:
    """Makes one process compute what ``world`` DDP processes compute together: each batch-norm
    layer normalises each rank's part of a training batch (``shard``'s contiguous parts) with that
    part's statistics, and keeps rank 0's running statistics (which DDP hands to every rank). The
    one thing DDP computes per rank; used to check that N processes train the one-process model."""
    import torch.nn.functional as F

    for bn in module.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            own = bn.forward

            def forward(x, bn=bn, own=own):
                if not bn.training:
                    return own(x)
                bounds = [shard(0, len(x), Ranks(r, world)) for r in range(world)]
                parts = [F.batch_norm(x[a:b], None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for a, b in bounds]
                with torch.no_grad():
                    own(x[bounds[0][0] : bounds[0][1]])
                return torch.cat(parts)

            bn.forward = forward
