"""A member of a lockstep training (``Member``), what training reports (``StepInfo``, results,
errors) and what an executor does (``Executor``): the vocabulary the loop and executors share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from vaelab.checkpoint import TrainState
from vaelab.config import ScheduleSpec, TrainConfig
from vaelab.errors import InputError, VaelabError
from vaelab.history import History
from vaelab.models import LatentModel
from vaelab.schedules import value_at
from vaelab.train.step import StepContext


class TrainingDiverged(VaelabError, RuntimeError):
    """The loss or a gradient became NaN or infinite (and the skip policy, if chosen, ran
    out of skips). ``step`` and ``epoch`` say where, ``term`` what: "reconstruction", "KL",
    "reconstruction and KL", "loss" (the objective itself, e.g. β·KL or the IWAE bound) or
    "gradients"; ``history`` ends with the failing epoch."""

    def __init__(self, step: int, epoch: int, history: History, *, term: str = "loss", advice: str = "",
                 skips: int = 0) -> None:
        what = {"gradients": "gradients were", "loss": "loss was",
                "reconstruction and KL": "reconstruction and KL terms were"}.get(term, f"{term} term was")
        after = f" after {skips} skipped steps (train.max_skips = {skips})" if skips else ""
        super().__init__(
            f"training stopped{after}: the {what} NaN or infinite at step {step} (epoch {epoch}). {advice}".rstrip()
        )
        self.step, self.epoch, self.history, self.term = step, epoch, history, term


@dataclass
class MemberResult:
    """How one member of a lockstep training ended.

    history: its per-epoch rows (the failing epoch last when it diverged).
    state: resumes this member exactly (for a diverged member: the state of its last
        checkpoint, the one its run directory holds).
    error: the member stopped on a non-finite value (the others went on); None otherwise.
    """

    history: History
    state: TrainState
    error: TrainingDiverged | None = None


class TrainingInterrupted(VaelabError):
    """``should_stop`` asked the loop to stop. A checkpoint of the current step (``state``, mid-epoch
    included) went to ``on_checkpoint`` for every running member; training with that state
    resumes exactly. ``results`` holds every member's history and state (one for ``fit``)."""

    def __init__(self, step: int, epoch: int, state: TrainState, history: History,
                 results: list[MemberResult] | None = None) -> None:
        super().__init__(f"training interrupted at step {step} (epoch {epoch}); a checkpoint of this step was saved")
        self.step, self.epoch, self.state, self.history = step, epoch, state, history
        self.results = results if results is not None else [MemberResult(history, state)]


class TrainingDataError(InputError):
    """What fit() was given cannot be trained on: no rows, the wrong width, or NaN / inf values."""


@dataclass
class StepInfo:
    """Passed to the progress callback after every optimizer step (and every skipped one).

    ``terms`` holds every named term of the objective this step ("recon", "kl", and whatever
    the family adds); ``recon`` and ``kl`` repeat the first two for callers that show only those.
    """

    step: int
    total_steps: int
    epoch: int
    loss: float
    recon: float
    kl: float
    lr: float = math.nan  # the learning rate of this step (for a skipped step: the one it would have used)
    skipped: bool = False  # nonfinite = "skip" skipped this step
    grad_norm: float = math.nan  # gradient norm over all parameters, before clipping
    terms: dict[str, float] = field(default_factory=dict)


# The held-out points scored at the end of an epoch: at most this many, a fixed subset. 500
# points cost the default run (radial_gmm, 2,000 points, IWAE k = 4) about 3.5% of its
# training time when scored every epoch; smaller training sets are scored less often
# (``vaelab.train.loop.heldout_every``).
HELDOUT_POINTS = 500
# Seeds of the subset's choice and of the held-out ELBO's draws z ~ q(z|x): fixed, the same for
# every member and every epoch (common random numbers, so that a change between epochs is the
# model's, not the noise's), and apart from every member's training generator.
HELDOUT_SEED = 20_240_601


@dataclass
class HeldOut:
    """Held-out points x (M, D) [with their conditions c (M, C)] that the loop scores at the end
    of every epoch: the history's ``heldout_*`` columns (``vaelab.train.loop.heldout_terms``).

    Build it with :meth:`subset`, which keeps a fixed, seeded choice of at most
    ``HELDOUT_POINTS`` of them, so that the per-epoch score stays cheap and every run on the
    same test split scores the same points.
    """

    x: Tensor
    c: Tensor | None = None

    @classmethod
    def subset(cls, x: Tensor, c: Tensor | None = None, *, max_points: int = HELDOUT_POINTS) -> HeldOut:
        """At most ``max_points`` of the rows of x (and c): all of them when there are no more,
        else a random choice drawn from a generator seeded with ``HELDOUT_SEED`` (the same rows
        for the same x, in every run)."""
        if x.ndim != 2 or len(x) == 0:
            raise TrainingDataError(f"held-out points must be a non-empty (M, D) tensor; got shape {tuple(x.shape)}")
        if c is not None and len(c) != len(x):
            raise TrainingDataError(f"held-out x has {len(x)} rows but c has {len(c)}; give one condition per point")
        if len(x) <= max_points:
            return cls(x, c)
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(HELDOUT_SEED))[:max_points]
        rows = rows.sort().values.to(x.device)
        return cls(x[rows], None if c is None else c[rows.to(c.device)])


@dataclass
class Member:
    """One model's place in the loop: its settings, generator, state and history, and the
    running epoch (its shuffle, binarized data and partial sums)."""

    index: int
    model: LatentModel
    config: TrainConfig
    generator: torch.Generator
    state: TrainState
    history: History
    schedules: dict[str, ScheduleSpec]  # "beta" and the family's scalars; the learning rate apart
    lr_schedule: ScheduleSpec
    last_saved: TrainState
    elapsed: float
    error: TrainingDiverged | None = None
    # The running epoch.
    epoch_rng: Tensor | None = None
    perm: Tensor | None = None
    x_epoch: Tensor | None = None
    sums: list[float] = field(default_factory=list)  # Σ batch size · (loss, terms ...), float64 on the host
    seen: int = 0
    skipped: int = 0
    norm_max: float = 0.0
    started: float = 0.0
    lr: float = math.nan  # the learning rate of the last step

    def scalars(self, step: int, budget: int) -> dict[str, float]:
        """The named scalars of the 0-based step ``step`` (β and the family's), from their schedules."""
        return {name: value_at(spec, step, budget) for name, spec in self.schedules.items()}

    def learning_rate(self, step: int, budget: int) -> float:
        """Adam's step size at ``step``: its schedule, halved once for every step skipped so far."""
        return value_at(self.lr_schedule, step, budget) * 0.5 ** self.state.skips


class Executor(Protocol):
    """Runs the arithmetic of a step for the running members; the loop does the rest."""

    term_names: list[str]  # the objective's term names, set by every forward pass

    def batch(self, members: Sequence[Member], b: int) -> tuple[Tensor, Tensor | None]:
        """The members' b-th batches (x, c) of this epoch, in the executor's layout."""
        ...

    def forward_backward(self, members: Sequence[Member], xb: Tensor, cb: Tensor | None,
                         contexts: Sequence[StepContext]) -> list[list[float]]:
        """Forward and backward pass; per member [loss, *terms, gradient norm] on the host."""
        ...

    def update(self, members: Sequence[Member]) -> None:
        """Clip (``grad_clip``) and step each member's optimizer with its ``lr``."""
        ...

    def discard(self, member: Member) -> None:
        """Drop a skipped member's gradients."""
        ...

    def sync(self, member: Member) -> None:
        """Make ``member.model`` hold the member's current weights and buffers."""
        ...

    def optimizer_state(self, member: Member) -> dict[str, Any]:
        """The member's optimizer state as a ``torch.optim.Adam`` state_dict (resumes with any executor)."""
        ...

    def state_extras(self, member: Member) -> dict[str, Any]:
        """TrainState fields the executor adds to a checkpoint (the ranks' noise generators)."""
        ...


__all__ = ["HELDOUT_POINTS", "HELDOUT_SEED", "Executor", "HeldOut", "Member", "MemberResult", "StepInfo",
           "TrainingDataError", "TrainingDiverged", "TrainingInterrupted"]
