"""One run on many processes with torchrun: the ranks, their shares, reductions, rank-0 writes.

vaelab ships no launcher of its own: ``torchrun --standalone --nproc-per-node N -m vaelab train
...`` (or ``vaelab train --nproc N``, which runs exactly that) starts N processes; torchrun
sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous (MASTER_ADDR / MASTER_PORT) in each, and
``World.from_env`` reads them. Multi-node runs use torchrun's own rendezvous flags.

- Data: every rank draws the same permutation per epoch (from the run's seeded data
  generator); the global batch of ``--batch-size`` rows is split into contiguous shares, one
  per rank (``share``), so every rank takes the same number of steps.
- Noise: each rank draws its reparameterisation noise from a generator of its own, seeded
  from the seed and the rank (``noise_seed``) and saved in every checkpoint.
- Reductions: the loss and every term are summed as Σ_r n_r · mean_r over the ranks and
  divided by the global batch size (never a mean of means); gradients are averaged by
  DistributedDataParallel with each rank's loss weighted by W · n_r / n, so the update is the
  one a single process makes on the whole batch. Stop requests are OR-ed across ranks.
- Writes: rank 0 alone claims the run directory and writes checkpoints, history, metrics and
  figures; the others wait for it at a barrier.

Backends: nccl on CUDA, gloo on the CPU (``VAELAB_DIST_BACKEND`` overrides). Every collective
times out after ``VAELAB_DIST_TIMEOUT`` seconds (default 120), so a rank that dies makes the
others fail with a message instead of waiting forever (torchrun itself stops the others too).
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from vaelab.errors import InputError

# A fixed odd multiplier spreads the ranks' noise seeds apart (a seed per (seed, rank) pair).
_RANK_STRIDE = 0x9E3779B97F4A7C15
_GLOO_DRAIN_S = 0.1  # how long shutdown() leaves the GIL to gloo's worker threads (see there)


class DistributedError(InputError):
    """torchrun's environment is incomplete or inconsistent, or the process group cannot start."""


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes and its local rank on the node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK; one process without them."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        try:
            rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
        except (KeyError, ValueError) as err:
            raise DistributedError(f"torchrun's environment is incomplete ({err}): RANK, WORLD_SIZE and LOCAL_RANK "
                                   "must be integers; start vaelab with torchrun or vaelab train --nproc N") from None
        if not 0 <= rank < size:
            raise DistributedError(f"RANK={rank} is outside WORLD_SIZE={size}")
        return cls(rank, size, local)

    def device(self, requested: str | torch.device) -> torch.device:
        """The device of this rank: CUDA runs use the LOCAL_RANK-th GPU, other devices as requested."""
        device = torch.device(requested)
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device


def backend_for(device: torch.device) -> str:
    """nccl for CUDA, gloo otherwise; VAELAB_DIST_BACKEND overrides."""
    return os.environ.get("VAELAB_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")


def timeout() -> datetime.timedelta:
    raw = os.environ.get("VAELAB_DIST_TIMEOUT", "120")
    try:
        seconds = float(raw)
    except ValueError:
        raise DistributedError(f"VAELAB_DIST_TIMEOUT={raw!r}: give the collectives' timeout in seconds") from None
    return datetime.timedelta(seconds=seconds)


def init(world: World, device: torch.device) -> None:
    """Join torchrun's process group (once per process); nothing to do for one process."""
    if not world.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend_for(device), timeout=timeout())
    except (RuntimeError, ValueError) as err:
        raise DistributedError(f"cannot join torchrun's process group ({err}); check MASTER_ADDR / MASTER_PORT "
                               "and that every rank was started") from None


def shutdown() -> None:
    """Leave torchrun's process group: the last call of a process that trained or evaluated under it.

    gloo's worker threads outlive the group (``destroy_process_group`` does not join them), and one
    may not yet have dropped its reference to a finished collective's tensor. Dropping it takes the
    GIL, and a thread that asks for the GIL while the interpreter finalizes is ended with
    ``pthread_exit`` inside a C++ destructor: "terminate called without an active exception", and
    a run that succeeded exits with SIGABRT (a gdb backtrace showed ``pt_gloo_runloop`` in
    ``~AsyncAllreduceWork``). So this thread gives the GIL up for a moment before it returns: 6 of
    160 two-process DDP runs aborted that way without the pause, 0 of 120 with it.
    """
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(_GLOO_DRAIN_S)


def noise_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s noise generator, a 64-bit value derived from the run's seed."""
    return (seed + (rank + 1) * _RANK_STRIDE) % 2**64  # torch.Generator.manual_seed takes 0 .. 2^64 - 1


def share(idx: Tensor, world: World) -> tuple[Tensor, float]:
    """This rank's contiguous share of a global batch ``idx`` (B,), and the weight W · n_r / B of
    its loss. A rank left without rows (a last batch smaller than the world) takes the batch's
    first row with weight 0: it still runs the step (no rank waits for another), adds nothing."""
    part = idx.tensor_split(world.size)[world.rank]
    if part.numel() == 0:
        return idx[:1], 0.0
    return part, world.size * part.numel() / idx.numel()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Σ over the ranks of each value (float64)."""
    return sum_over_ranks(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def sum_over_ranks(t: Tensor) -> Tensor:
    """Σ over the ranks of a tensor (a copy): every rank gets the same values. A tensor that each
    rank fills in its own rows (zeros elsewhere) gathers exactly, as x + 0 is x."""
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_states(state: Tensor, device: torch.device, world: World) -> list[Tensor]:
    """Every rank's generator state (a uint8 tensor), in rank order."""
    t = state.to(device)
    out = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(out, t)
    return [s.cpu() for s in out]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. whether its preparation succeeded)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item() > 0)


__all__ = ["DistributedError", "World", "all_sum", "any_rank", "backend_for", "barrier", "broadcast_flag",
           "gather_states", "init", "noise_seed", "share", "shutdown", "sum_over_ranks"]
