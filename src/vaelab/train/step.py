"""One training step as a module: ``TrainStep`` (a model plus its objective) and ``StepContext``.

``TrainStep`` is the one thing the executors wrap: ``torch.compile`` compiles it, a stacked
sweep evaluates it under ``functional_call`` / ``vmap`` with each member's parameters, and
``DistributedDataParallel`` wraps it so that the forward pass it sees is the whole objective
(its gradient hooks then average every parameter's gradient across ranks). The model still
never computes its own loss: ``forward`` hands the model and the batch to the objective of
``vaelab.objectives``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from vaelab.config import ConfigError, TrainConfig
from vaelab.distributions import NoiseTape
from vaelab.models import LatentModel
from vaelab.objectives import ObjectiveOutput, get_objective, objective_name


@dataclass
class StepContext:
    """What a training step needs besides the batch.

    step: the 0-based optimizer step; epoch: the 0-based epoch it belongs to.
    scalars: this step's named scalars from their schedules (``vaelab.schedules``): "beta",
        "lr", and every scalar the family declares (``LatentModel.step_scalars``). A float,
        or a 0-dim tensor (a compiled step; one per member under a stacked sweep's vmap).
    noise: where the N(0, I) draws come from: the member's ``torch.Generator``, or a
        ``NoiseTape`` of draws made ahead (a compiled or stacked step).
    """

    step: int
    epoch: int
    scalars: Mapping[str, float | Tensor] = field(default_factory=dict)
    noise: torch.Generator | NoiseTape | None = None


class TrainStep(nn.Module):
    """``model`` and its training objective under ``config``: forward(x, c, ctx) -> ObjectiveOutput.

    The objective is resolved once (``objectives.objective_name``: the configured one where
    the family takes it, else its default), with its k and free bits, so that a step costs no
    name lookups. Before the objective runs, the family's scalars of this step go to
    ``model.set_scalars``.
    """

    def __init__(self, model: LatentModel, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.objective_name = objective_name(model, config)
        self.objective = get_objective(self.objective_name)
        if config.free_bits > 0 and not self.objective.uses_free_bits:
            raise ConfigError(f"free bits floor the ELBO's KL term, which the {self.objective_name} objective does "
                              "not have; use objective = 'elbo' (--objective elbo) or free_bits = 0")
        self.k, self.free_bits, self.free_bits_group = config.k, config.free_bits, config.free_bits_group
        self.family_scalars = tuple(model.step_scalars())

    def forward(self, x: Tensor, c: Tensor | None, ctx: StepContext) -> ObjectiveOutput:
        """x (B, D), c (B, C) or None: the objective's loss and named terms on this batch."""
        if self.family_scalars:
            self.model.set_scalars({name: ctx.scalars[name] for name in self.family_scalars})
        # A tape stands in for the generator (the objectives pass it on to distributions.rsample);
        # β may be a 0-dim tensor: the objectives only multiply by it.
        return self.objective(self.model, x, c, beta=cast(float, ctx.scalars["beta"]), k=self.k,
                              generator=cast(torch.Generator, ctx.noise), free_bits=self.free_bits,
                              free_bits_group=self.free_bits_group)


__all__ = ["StepContext", "TrainStep"]
