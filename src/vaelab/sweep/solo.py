"""Members trained one after the other with ``train.fit``: the engine of ``vaelab.sweep.run``
until the vectorized one (``vaelab.sweep.stack.fit_stack``) lands, with its interface.

Each member gets exactly what ``train.fit`` of that member alone gives; a member that
diverges is reported in its ``MemberResult`` and the next one trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from vaelab.checkpoint import TrainState
from vaelab.config import ModelConfig, TrainConfig
from vaelab.history import History
from vaelab.models import LatentModel
from vaelab.train import StepInfo, TrainingDiverged, fit


@dataclass
class MemberResult:
    """How one member ended: its history, a state that resumes it, and its divergence if any."""

    history: History
    state: TrainState
    error: TrainingDiverged | None


# What must be equal for members to share one stacked model: shapes, the objective's form,
# and the batches (one shared data order needs one batch size and one budget).
_SHARED_TRAIN = ("objective", "k", "batch_size", "epochs", "steps", "checkpoint_every", "diversity_samples",
                 "nonfinite", "max_skips")
_VARYING_MODEL = ("recon_var",)


def can_stack(model_configs: Sequence[ModelConfig], train_configs: Sequence[TrainConfig]) -> str | None:
    """None when these members could train as one stacked model, else the reason."""
    first_m, first_t = model_configs[0], train_configs[0]
    for m in model_configs[1:]:
        for field in type(m).model_fields:
            if field not in _VARYING_MODEL and getattr(m, field) != getattr(first_m, field):
                return f"model settings differ ({field})"
    for t in train_configs[1:]:
        for field in _SHARED_TRAIN:
            if getattr(t, field) != getattr(first_t, field):
                return f"train settings differ ({field})"
    return None


def fit_members(
    models: Sequence[LatentModel], x: Tensor, configs: Sequence[TrainConfig], *, c: Tensor | None = None,
    states: Sequence[TrainState | None] | None = None, histories: Sequence[History | None] | None = None,
    on_checkpoint: Callable[[int, LatentModel, History, TrainState], None] | None = None,
    on_step: Callable[[int, StepInfo], None] | None = None, dynamic_binarization: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[MemberResult]:
    """Train member i = ``models[i]`` with ``configs[i]`` on x (N, D) [c (N, C)], one after the
    other, each exactly as ``train.fit``; same interface as ``fit_stack``.

    ``should_stop`` interrupts the member in training (``TrainingInterrupted``, after its
    checkpoint); members not yet started stay untouched.
    """
    results = []
    for i, (model, config) in enumerate(zip(models, configs, strict=True)):
        state = None if states is None else states[i]
        history = (None if histories is None else histories[i]) or History()
        last: list[TrainState] = [state or TrainState()]

        def checkpoint(m: LatentModel, h: History, s: TrainState, i: int = i, last: list[TrainState] = last) -> None:
            last[0] = s
            if on_checkpoint is not None:
                on_checkpoint(i, m, h, s)

        def step(info: StepInfo, i: int = i) -> None:
            if on_step is not None:
                on_step(i, info)

        try:
            fit(model, x, config, c=c, state=state, history=history, on_step=step, on_checkpoint=checkpoint,
                dynamic_binarization=dynamic_binarization, should_stop=should_stop)
            results.append(MemberResult(history, last[0], None))
        except TrainingDiverged as err:
            results.append(MemberResult(err.history, last[0], err))
    return results
