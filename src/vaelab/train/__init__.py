"""Training: one loop, the executors that run its steps, and the run driver.

- ``step``: ``TrainStep`` (a model plus its objective, the module every executor wraps) and
  ``StepContext`` (the step, its scheduled scalars and where its noise comes from);
- ``loop``: the one training loop (``train_members``), ``fit`` for one model and
  ``fit_stack`` for many trained as one;
- ``eager`` (and compiled), ``stacked`` (vmap over a sweep's members), ``distributed``
  (torchrun, DistributedDataParallel): the executors;
- ``run``: the run preparation shared by ``vaelab train`` and ``vaelab sweep``, and ``train_run``.
"""

from vaelab.train.eager import CompileError, EagerExecutor
from vaelab.train.loop import (
    check_training_data,
    diversity,
    fit,
    fit_stack,
    heldout_terms,
    make_members,
    train_members,
)
from vaelab.train.members import (
    HeldOut,
    MemberResult,
    StepInfo,
    TrainingDataError,
    TrainingDiverged,
    TrainingInterrupted,
)
from vaelab.train.run import RESUMABLE, resolve_paths, resume_config, train_run
from vaelab.train.stacked import PER_MEMBER_TRAIN, StackedExecutor, can_stack, stack_limit
from vaelab.train.step import StepContext, TrainStep

__all__ = ["PER_MEMBER_TRAIN", "RESUMABLE", "CompileError", "EagerExecutor", "HeldOut", "MemberResult",
           "StackedExecutor", "StepContext", "StepInfo", "TrainStep", "TrainingDataError", "TrainingDiverged",
           "TrainingInterrupted", "can_stack", "check_training_data", "diversity", "fit", "fit_stack",
           "heldout_terms", "make_members", "resolve_paths", "resume_config", "stack_limit", "train_members",
           "train_run"]
