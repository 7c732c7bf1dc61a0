"""Members trained one after the other with ``train.fit``, with ``train.fit_stack``'s interface:
the engine of ``vaelab.sweep.run`` for a group that cannot stack (``nonfinite = "skip"``, ``compile``).

Each member gets exactly what ``train.fit`` of that member alone gives; a member that
diverges is reported in its ``MemberResult`` and the next one trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from vaelab.checkpoint import TrainState
from vaelab.config import TrainConfig
from vaelab.history import History
from vaelab.models import LatentModel
from vaelab.train import HeldOut, MemberResult, StepInfo, TrainingDiverged, fit


def fit_members(
    models: Sequence[LatentModel], x: Tensor, configs: Sequence[TrainConfig], *, c: Tensor | None = None,
    states: Sequence[TrainState | None] | None = None, histories: Sequence[History | None] | None = None,
    on_checkpoint: Callable[[int, LatentModel, History, TrainState], None] | None = None,
    on_step: Callable[[int, StepInfo], None] | None = None, dynamic_binarization: bool = False,
    should_stop: Callable[[], bool] | None = None, heldout: HeldOut | Tensor | None = None,
) -> list[MemberResult]:
    """Train member i = ``models[i]`` with ``configs[i]`` on x (N, D) [c (N, C)], one after the
    other, each exactly as ``train.fit``; same interface as ``fit_stack``.

    ``should_stop`` interrupts the member in training (``TrainingInterrupted``, after its
    checkpoint); members not yet started stay untouched. ``heldout``: the points every member is
    scored on at each epoch's end (the history's ``heldout_*`` columns), as in ``fit``.
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
                dynamic_binarization=dynamic_binarization, should_stop=should_stop, heldout=heldout)
            results.append(MemberResult(history, last[0], None))
        except TrainingDiverged as err:
            results.append(MemberResult(err.history, last[0], err))
    return results
