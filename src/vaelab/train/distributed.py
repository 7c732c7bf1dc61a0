"""The distributed executor: one model on every rank of torchrun, its step wrapped by DDP.

Each rank runs the eager executor's arithmetic on its share of the global batch
(``vaelab.distributed.share``) through ``DistributedDataParallel(TrainStep)``: the whole
objective is DDP's forward pass, so its gradient hooks average every parameter's gradient
over the ranks during the backward pass. Each rank's loss is weighted by W · n_r / B before
the backward, so the averaged gradient is that of the mean over the whole global batch,
the gradient one process computes on it. After the all-reduce every rank holds the same
gradient, clips it by the same norm and takes the same Adam step: the parameters stay equal on
every rank without being sent again.

The values the loop records (loss, terms) are reduced as Σ_r n_r · mean_r / B, so the history
holds the global batch's means, the same numbers on every rank; so are the non-finite
decisions (no rank raises while the others wait).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from vaelab import distributed
from vaelab.checkpoint import TrainState
from vaelab.config import TrainConfig
from vaelab.distributed import World
from vaelab.models import LatentModel
from vaelab.train.eager import EagerExecutor
from vaelab.train.members import Member
from vaelab.train.step import StepContext, TrainStep


class DistributedExecutor(EagerExecutor):
    """The eager executor on this rank's share of each batch, with DDP averaging the gradients."""

    def __init__(self, model: LatentModel, config: TrainConfig, state: TrainState, world: World,
                 c: Tensor | None = None) -> None:
        self.world = world
        self.device = next(model.parameters()).device
        step = TrainStep(model, config)
        # A family whose objectives each train only part of its parameters (a VQ-VAE: the first stage
        # leaves the prior over the codes alone, the second everything else) says so; DDP then
        # looks for the parameters a step did not use instead of waiting for their gradients.
        ddp = DistributedDataParallel(step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                      find_unused_parameters=bool(getattr(model, "trains_in_parts", False)))
        super().__init__(model, config, state, c, step_module=ddp, train_step=step)
        # This rank's noise generator: its saved state when the run was saved by as many ranks,
        # else seeded from the seed, the rank and the step (a run resumed on another number of
        # processes continues with fresh, reproducible noise).
        self.noise = torch.Generator(device=self.device)
        if state.noise_rngs is not None and len(state.noise_rngs) == world.size:
            self.noise.set_state(state.noise_rngs[world.rank])
        else:
            self.noise.manual_seed(distributed.noise_seed(config.seed + state.step, world.rank))
        self.weight = 1.0  # W · n_r / B of the running step

    def batch(self, members: Sequence[Member], b: int) -> tuple[Tensor, Tensor | None]:
        (m,) = members
        bs = m.config.batch_size
        assert m.perm is not None and m.x_epoch is not None
        idx, self.weight = distributed.share(m.perm[b * bs:(b + 1) * bs], self.world)
        self.rows = idx.numel() if self.weight else 0
        return m.x_epoch.index_select(0, idx), (None if self.c is None else self.c.index_select(0, idx))

    def forward_backward(self, members: Sequence[Member], xb: Tensor, cb: Tensor | None,
                         contexts: Sequence[StepContext]) -> list[list[float]]:
        ctx = contexts[0]
        out = self.run(xb, cb, StepContext(ctx.step, ctx.epoch, ctx.scalars, self.noise))
        self.optimizer.zero_grad(set_to_none=True)
        (out.loss * self.weight).backward()  # DDP averages over the ranks: Σ_r (n_r / B) ∂mean_r
        self.grad_norm = self.norm([p.grad for p in self.params if p.grad is not None])
        self.term_names = list(out.terms)
        with torch.no_grad():
            local = torch.stack([out.loss, *out.terms.values()]).double() * self.rows  # Σ over this rank's rows
        total = distributed.all_sum([*local.tolist(), float(self.rows)], self.device)
        *sums, rows = total
        return [[v / rows for v in sums] + [float(self.grad_norm)]]

    def state_extras(self, member: Member) -> dict[str, Any]:
        """Every rank's noise generator state, gathered (a collective: every rank calls it)."""
        return {"noise_rngs": distributed.gather_states(self.noise.get_state(), self.device, self.world)}


__all__ = ["DistributedExecutor"]
