"""The training loop, written once: batch, context, step, backward, clip, update, record.

``train_members`` trains one or more models ("members") in lockstep through an executor
(vaelab.train.executors: eager or compiled for one model, stacked for a sweep's members,
distributed under torchrun). The loop owns everything that is not arithmetic: the shuffle and
binarization of every epoch, the schedules' scalars of every step, the non-finite policy, the
history rows, checkpoints, resume from the middle of an epoch and ``should_stop``. An executor
only runs the forward and backward pass of the members it is given and updates them.

All randomness of a member (its shuffles, binarizations and reparameterisation noise) comes
from its own ``torch.Generator`` seeded with ``train.seed``, whose state is saved with every
checkpoint: a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vaelab import distributed
from vaelab.checkpoint import TrainState
from vaelab.config import TrainConfig
from vaelab.data.pixels import binarize
from vaelab.distributed import World
from vaelab.history import HELDOUT_COLUMNS, History
from vaelab.models import LatentModel, VariationalModel
from vaelab.objectives import ae_loss, elbo, get_objective, objective_name
from vaelab.schedules import beta_spec, check_schedule, lr_spec, mean_over, total_steps
from vaelab.train.distributed import DistributedExecutor
from vaelab.train.eager import EagerExecutor
from vaelab.train.members import (
    HELDOUT_POINTS,
    HELDOUT_SEED,
    Executor,
    HeldOut,
    Member,
    MemberResult,
    StepInfo,
    TrainingDataError,
    TrainingDiverged,
    TrainingInterrupted,
)
from vaelab.train.stacked import StackedExecutor, check_members
from vaelab.train.step import StepContext


def make_members(models: Sequence[LatentModel], configs: Sequence[TrainConfig], n: int, *,
                 states: Sequence[TrainState | None] | None = None,
                 histories: Sequence[History | None] | None = None) -> list[Member]:
    """The loop's members for these models and configs on n training points (fresh or resumed)."""
    members = []
    for i, (model, config) in enumerate(zip(models, configs, strict=True)):
        given_state = states[i] if states is not None else None
        given_history = histories[i] if histories is not None else None
        state = given_state if given_state is not None else TrainState()
        history = given_history if given_history is not None else History()
        _check_state_fits(model, state)
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(config.seed)
        if state.rng is not None:
            generator.set_state(state.rng)
        n_batches = math.ceil(n / config.batch_size)
        check_schedule(config, n_batches, total_steps(config, n))
        schedules = {"beta": beta_spec(config, n_batches), **model.step_scalars()}
        members.append(Member(i, model, config, generator, state, history, schedules, lr_spec(config, n_batches),
                              last_saved=copy.copy(state), elapsed=history.last["seconds"] if history.last else 0.0))
    return members


def _check_state_fits(model: LatentModel, state: TrainState) -> None:
    """Refuse a training state whose optimizer moments belong to a model with other parameters
    (another run's state.pt), naming it, before torch's "loaded state dict contains a parameter
    group that doesn't match the size of optimizer's group" (audit AP52)."""
    saved = state.optimizer
    if not isinstance(saved, dict):
        return
    params = list(model.parameters())
    held = [i for group in saved.get("param_groups", []) for i in group.get("params", [])]
    moments = saved.get("state", {})
    wrong = len(held) != len(params)
    if not wrong:
        for k, p in zip(held, params, strict=True):
            m = moments.get(k, {}).get("exp_avg") if isinstance(moments.get(k), dict) else None
            if isinstance(m, Tensor) and tuple(m.shape) != tuple(p.shape):
                wrong = True
                break
    if wrong:
        raise TrainingDataError(
            f"state does not fit this model: its optimizer state is for {len(held)} parameter tensors of other "
            f"shapes, this model has {len(params)}; it comes from another model (another run's state.pt?): pass "
            "the state saved with this model's weights, or state=None to start afresh")


def train_members(
    executor: Executor,
    members: Sequence[Member],
    x: Tensor,
    c: Tensor | None = None,
    *,
    dynamic_binarization: bool = False,
    on_step: Callable[[int, StepInfo], None] | None = None,
    on_checkpoint: Callable[[int, LatentModel, History, TrainState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    heldout: HeldOut | None = None,
) -> list[MemberResult]:
    """Train every member on x (N, D) [with conditions c (N, C)] for its budget, in lockstep.

    The members share the batch size and budget (and stand at the same step). Each epoch draws
    every member's [binarization and] shuffle from its generator; each step runs the executor
    on the members' batches with their contexts, then applies the non-finite policy: a member
    whose loss, terms or gradient norm is NaN or infinite skips the step (``nonfinite = "skip"``:
    no update, the learning rate halved from then on, at most ``max_skips`` times) or stops
    alone with TrainingDiverged in its result (the history ends with the failing epoch; its
    last checkpoint stays). ``on_step(i, info)`` follows every step of member i;
    ``on_checkpoint(i, model, history, state)`` gets every ``checkpoint_every`` epochs and the
    end; ``should_stop`` (asked before every step) checkpoints the current step of every
    running member and raises TrainingInterrupted. ``heldout``: points every member is scored
    on at the end of each epoch (the history's ``heldout_*`` columns, see :func:`heldout_terms`).
    """
    config0 = members[0].config
    n, bs = x.shape[0], config0.batch_size
    n_batches = math.ceil(n / bs)
    budget = total_steps(config0, n)
    step = members[0].state.step
    running = [m for m in members if m.error is None]
    for m in running:
        m.model.train()
    while step < budget and running:
        start = time.perf_counter()
        first_batch = 0
        for m in running:
            first_batch = _begin_epoch(m, x, start, dynamic_binarization, compact=len(members) > 1)
        epoch_first_step = step - first_batch  # every batch of an epoch is one step, skipped or not
        for b in range(first_batch, n_batches):
            if step >= budget or not running:
                break
            if should_stop is not None and should_stop():
                _interrupt(executor, members, running, b, on_checkpoint)
            xb, cb = executor.batch(running, b)
            contexts = [StepContext(step, m.state.epoch, m.scalars(step, budget), m.generator) for m in running]
            values = executor.forward_backward(running, xb, cb, contexts)
            names = executor.term_names
            step += 1
            batch_size = min(bs, n - b * bs)
            stepped: list[tuple[Member, StepInfo]] = []
            for m, (loss, *term_values, norm) in zip(list(running), values, strict=True):
                terms = dict(zip(names, term_values, strict=True))
                m.state.step = step
                m.lr = m.learning_rate(step - 1, budget)
                info = StepInfo(step, budget, m.state.epoch + 1, loss, terms.get("recon", math.nan),
                                terms.get("kl", math.nan), m.lr, False, norm, terms)
                step_sums = [v * batch_size for v in (loss, *term_values)]  # float64, as the history's means
                if all(math.isfinite(v) for v in (loss, *term_values, norm)):
                    m.sums = step_sums if not m.sums else [a + v for a, v in zip(m.sums, step_sums, strict=True)]
                    m.seen += batch_size
                    m.norm_max = max(m.norm_max, norm)
                    stepped.append((m, info))
                    continue
                term = _nonfinite_term(loss, terms, norm)
                skip_limit = m.config.skip_limit if m.config.nonfinite == "skip" else 0
                if m.state.skips < skip_limit:  # skip: no update (Adam's moments stay), a smaller step from now on
                    executor.discard(m)
                    m.state.skips += 1
                    m.skipped += 1
                    info.skipped = True
                    stepped.append((m, info))
                    continue
                # Stop this member: record the failing epoch so the report can show it; its last
                # checkpoint stays, and its model holds the weights before this step.
                m.history.append(_row(m, m.state.epoch + 1, step, names, step_sums, batch_size, math.nan,
                                      m.elapsed + time.perf_counter() - m.started,
                                      mean_over(m.schedules["beta"], epoch_first_step, step, budget), norm))
                m.error = TrainingDiverged(step, m.state.epoch + 1, m.history, term=term,
                                           advice=_divergence_advice(term, m.model, m.config, _data_scale(x)),
                                           skips=m.state.skips)
                executor.sync(m)
                m.model.eval()
                running.remove(m)
            executor.update([m for m, info in stepped if not info.skipped])
            if on_step is not None:
                for m, info in stepped:
                    on_step(m.index, info)
        for m in running:
            _end_epoch(executor, m, x, c, step, budget, epoch_first_step, names=executor.term_names,
                       on_checkpoint=on_checkpoint, heldout=heldout)
    for m in members:
        m.model.eval()
    return [MemberResult(m.history, m.last_saved, m.error) for m in members]


def _begin_epoch(m: Member, x: Tensor, start: float, dynamic_binarization: bool, *, compact: bool = False) -> int:
    """Draw the member's epoch (binarization, then shuffle) and return its first batch: 0, or
    where a checkpoint taken in the middle of this epoch stopped. ``compact``: keep binarized
    data as bool (a quarter of float32's memory, for the many copies of a stack)."""
    state, generator = m.state, m.generator
    m.sums, m.seen, m.skipped, m.norm_max, m.started = [], 0, 0, 0.0, start
    resuming = state.epoch_rng is not None
    if state.epoch_rng is not None:
        rng = generator.get_state()
        generator.set_state(state.epoch_rng)
    m.epoch_rng = generator.get_state()
    # Dynamic binarization: a fresh x_bin ~ Bernoulli(x) every epoch, from the member's generator,
    # so a resumed run draws the same bits (see vaelab.data.pixels).
    m.x_epoch = binarize(x, generator) if dynamic_binarization else x
    if dynamic_binarization and compact:
        m.x_epoch = m.x_epoch.bool()
    m.perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
    if not resuming:
        return 0
    # The epoch's draws are regenerated above; continue with the generator state and the
    # partial sums of the step where the run stopped.
    generator.set_state(rng)
    m.seen, m.skipped, m.norm_max = state.epoch_seen, state.epoch_skipped, state.grad_norm_max
    if state.epoch_sums is not None:
        m.sums = state.epoch_sums.double().tolist()
    m.started = start - state.epoch_seconds
    first = state.batch
    state.epoch_rng = None
    return first


def _end_epoch(executor: Executor, m: Member, x: Tensor, c: Tensor | None, step: int, budget: int,
               epoch_first_step: int, *, names: list[str],
               on_checkpoint: Callable[[int, LatentModel, History, TrainState], None] | None,
               heldout: HeldOut | None = None) -> None:
    """The member's history row (with its diversity column, and its held-out columns when
    ``heldout`` is given) and, when due, its checkpoint."""
    m.state.epoch += 1
    executor.sync(m)
    m.model.eval()
    n, config, device = x.shape[0], m.config, x.device
    div_gen = torch.Generator(device=device).manual_seed((config.seed * 1_000_003 + m.state.epoch) % 2**64)
    div = diversity(m.model, config.diversity_samples, div_gen,
                    None if c is None else c[torch.randint(n, (config.diversity_samples,), generator=div_gen,
                                                            device=device)])
    scores: dict[str, float] = {}
    if heldout is not None:
        every = heldout_every(m.model, config, n, len(heldout.x))
        scored = (m.state.epoch - 1) % every == 0 or step >= budget  # epochs 1, 1 + every, ... and the last
        scores = heldout_terms(m.model, heldout) if scored else dict.fromkeys(heldout_columns(m.model), math.nan)
    m.model.train()
    m.elapsed += time.perf_counter() - m.started
    m.history.append(_row(m, m.state.epoch, step, names, m.sums, m.seen, div, m.elapsed,
                          mean_over(m.schedules["beta"], epoch_first_step, step, budget), m.norm_max) | scores)
    done = step >= budget
    if done or m.state.epoch % config.checkpoint_every == 0:
        _checkpoint(executor, m, _snapshot(executor, m, done), on_checkpoint)


def _snapshot(executor: Executor, m: Member, complete: bool) -> TrainState:
    s = m.state
    return TrainState(step=s.step, epoch=s.epoch, optimizer=executor.optimizer_state(m),
                      rng=m.generator.get_state(), complete=complete, skips=s.skips, **executor.state_extras(m))


def _checkpoint(executor: Executor, m: Member, state: TrainState,
                on_checkpoint: Callable[[int, LatentModel, History, TrainState], None] | None) -> None:
    m.last_saved = state
    if on_checkpoint is not None:
        m.model.eval()
        on_checkpoint(m.index, m.model, m.history, state)
        m.model.train()


def _interrupt(executor: Executor, members: Sequence[Member], running: Sequence[Member], b: int,
               on_checkpoint: Callable[[int, LatentModel, History, TrainState], None] | None) -> None:
    """Checkpoint every running member at batch b of its epoch, then raise TrainingInterrupted."""
    for m in running:
        executor.sync(m)
        mid = _snapshot(executor, m, False)
        mid.epoch_rng, mid.batch, mid.epoch_sums = m.epoch_rng, b, torch.tensor(m.sums, dtype=torch.float64)
        mid.epoch_seen, mid.epoch_skipped = m.seen, m.skipped
        mid.epoch_seconds, mid.grad_norm_max = time.perf_counter() - m.started, m.norm_max
        _checkpoint(executor, m, mid, on_checkpoint)
    for m in members:
        m.model.eval()
    first = running[0]
    raise TrainingInterrupted(first.state.step, first.state.epoch + 1, first.last_saved, first.history,
                              [MemberResult(m.history, m.last_saved, m.error) for m in members])


def fit(
    model: LatentModel,
    x: Tensor,
    config: TrainConfig,
    *,
    c: Tensor | None = None,
    state: TrainState | None = None,
    history: History | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_checkpoint: Callable[[LatentModel, History, TrainState], None] | None = None,
    dynamic_binarization: bool = False,
    should_stop: Callable[[], bool] | None = None,
    world: World | None = None,
    progress: bool = False,
    heldout: HeldOut | Tensor | None = None,
) -> History:
    """Train ``model`` on x (N, D) [with conditions c (N, C)] with Adam; returns the History.

    ``state`` / ``history`` resume an earlier run (weights must already be loaded into the
    model), also from the middle of an epoch. ``on_checkpoint`` is called every
    ``checkpoint_every`` epochs and at the end with a state that resumes exactly. With
    ``dynamic_binarization`` x holds grey levels in [0, 1] and every epoch trains on a fresh
    draw x_bin ~ Bernoulli(x).

    ``should_stop`` is asked before every step (a ``threading.Event().is_set`` works: the
    library installs no signal handlers, the caller does). When it returns True, fit()
    hands a checkpoint of the current step to ``on_checkpoint`` and raises
    TrainingInterrupted.

    A NaN or infinite loss, reconstruction or KL term, or gradient is handled by
    ``config.nonfinite``: "stop" raises TrainingDiverged (naming the step and the term,
    before any checkpoint of the bad epoch is written); "skip" drops that step without
    updating, halves the learning rate for the rest of training, and counts the skip in the
    history; after ``config.skip_limit`` skips the next one stops. ``config.grad_clip``
    rescales the gradient to at most that norm before each step. ``config.compile`` runs the
    step through torch.compile (vaelab.train.eager.compiled_step).

    ``world``: this process's place under torchrun (``vaelab.distributed.World.from_env()``).
    With more than one process every rank calls fit with the same model, data and config;
    each computes its share of every batch and DDP averages the gradients
    (vaelab.train.distributed); the callbacks run on every rank (write only on rank 0), and
    ``should_stop`` on any rank stops them all at the same step.

    ``progress=True`` shows the step, the loss under its objective's name, and the elapsed and
    remaining time on one line of stderr (rank 0 only), as ``train_run(progress=True)`` does;
    nothing is printed without it.

    ``heldout``: held-out points (a ``HeldOut``, or an (M, D) tensor for an unconditional model),
    scored at the end of every epoch: the history gains ``heldout_elbo``, ``heldout_recon`` and
    ``heldout_kl`` (an autoencoder: ``heldout_recon``), see :func:`heldout_terms`. More than
    ``HELDOUT_POINTS`` are cut to a fixed seeded subset; where the training set is so small that
    scoring would cost more than ~5% of an epoch, every few epochs (and the last) are scored and
    the others hold NaN (:func:`heldout_every`). The score draws from a generator of its own:
    the weights are exactly those of a fit without it.
    """
    if not isinstance(config, TrainConfig):  # (audit AP32: "'dict' object has no attribute 'seed'")
        raise TrainingDataError(f"fit needs a vaelab.TrainConfig as config, got {type(config).__name__}; build one "
                                "with TrainConfig(epochs=..., ...) or TrainConfig.model_validate({...})")
    if progress and (world is None or world.is_main):
        from vaelab.objectives import describe_loss
        from vaelab.progress import TrainProgress

        shown = TrainProgress(describe_loss(model, config), also=on_step)
        try:
            return fit(model, x, config, c=c, state=state, history=history, on_step=shown,
                       on_checkpoint=on_checkpoint, dynamic_binarization=dynamic_binarization,
                       should_stop=should_stop, world=world, heldout=heldout)
        finally:
            shown.close()
    check_training_data(model, x, c)
    scored = as_heldout(model, heldout)
    if not dynamic_binarization:  # dynamic draws are {0, 1} by construction
        # Once per data set, not per step: a Bernoulli likelihood trained on grey levels would
        # minimise a cross-entropy and report it as a likelihood.
        model.likelihood.check_support(x, "the training data")
    (member,) = make_members([model], [config], x.shape[0], states=[state], histories=[history])
    executor: Executor
    if world is not None and world.distributed:
        executor = DistributedExecutor(model, config, member.state, world, c)
        device, local_stop = x.device, should_stop
        # A collective every step: a stop asked on any rank stops every rank at the same step.
        should_stop = lambda: distributed.any_rank(local_stop is not None and local_stop(), device)  # noqa: E731
    else:
        executor = EagerExecutor(model, config, member.state, c)
    (result,) = train_members(
        executor, [member], x, c, dynamic_binarization=dynamic_binarization,
        on_step=None if on_step is None else lambda i, info: on_step(info),
        on_checkpoint=None if on_checkpoint is None else lambda i, m, h, s: on_checkpoint(m, h, s),
        should_stop=should_stop, heldout=scored)
    if result.error is not None:
        raise result.error
    return result.history


def fit_stack(
    models: Sequence[LatentModel],
    x: Tensor,
    configs: Sequence[TrainConfig],
    *,
    c: Tensor | None = None,
    states: Sequence[TrainState | None] | None = None,
    histories: Sequence[History | None] | None = None,
    on_checkpoint: Callable[[int, LatentModel, History, TrainState], None] | None = None,
    on_step: Callable[[int, StepInfo], None] | None = None,
    dynamic_binarization: bool = False,
    should_stop: Callable[[], bool] | None = None,
    heldout: HeldOut | Tensor | None = None,
) -> list[MemberResult]:
    """Train ``models[i]`` with ``configs[i]`` on x (N, D) [conditions c (N, C)], all as one stack.

    Each member ends with the weights, history and state ``fit(models[i], x, configs[i])``
    gives it (within float tolerance: vaelab.train.stacked); the members must pass
    ``can_stack``. ``states`` / ``histories`` resume members (weights already loaded), also
    from the middle of an epoch; the members' states must be at the same step.

    Callbacks get the member's index: ``on_step(i, info)`` after each of member i's steps, and
    ``on_checkpoint(i, models[i], history_i, state_i)`` every ``checkpoint_every`` epochs of that
    member and at the end: ``models[i]`` is an ordinary LatentModel holding member i's weights.
    A member whose loss, terms or gradients go NaN or infinite stops alone, as fit's "stop"
    policy does (``MemberResult.error`` holds the TrainingDiverged); the others go on.
    ``should_stop`` (asked before every step) hands every running member's checkpoint of this
    step to ``on_checkpoint`` and raises TrainingInterrupted (its ``results``: every member's).
    The history's ``seconds`` column counts the stack's wall time (the members train together).
    ``heldout`` (as in ``fit``): every member is scored on the same held-out points at the end
    of each epoch, with the same draws, so its ``heldout_*`` columns are those ``fit`` gives it.

    Returns:
        One MemberResult per member, in the order of ``models``.
    """
    check_members(models, configs, states, histories)
    check_training_data(models[0], x, c)
    if not dynamic_binarization:
        models[0].likelihood.check_support(x, "the training data")
    scored = as_heldout(models[0], heldout)
    members = make_members(models, configs, x.shape[0], states=states, histories=histories)
    return train_members(StackedExecutor(members, c), members, x, c, dynamic_binarization=dynamic_binarization,
                         on_step=on_step, on_checkpoint=on_checkpoint, should_stop=should_stop, heldout=scored)


@torch.no_grad()
def diversity(model: LatentModel, n: int, generator: torch.Generator, c: Tensor | None = None) -> float:
    """Var(E[x|z]) of n decoded prior samples (decoder means), summed over data dimensions.

    Near 0 means every z decodes to the same x (posterior collapse). A model that fits the data
    approaches Var(x) − E_z tr Cov(x|z), not Var(x): its observation noise carries the rest.
    """
    return float(model.sample(n, c, generator=generator).var(dim=0).sum())


HELDOUT_CHUNK = 500  # held-out points encoded and decoded at once
# The held-out score may decode at most one point per HELDOUT_SHARE points an epoch decodes in
# training (N·k forward and backward): at most ~5% of the training time (measured: scoring 1,000
# points costs 7% of an epoch of the default run, N·k = 8,000).
HELDOUT_SHARE = 8


def heldout_every(model: LatentModel, config: TrainConfig, n: int, points: int = HELDOUT_POINTS) -> int:
    """Every how many epochs ``points`` held-out points are scored: 1 where the score is cheap
    beside an epoch (n training points, k draws each under an objective that uses k), else the
    fewest epochs apart that keep it below one held-out point per ``HELDOUT_SHARE`` decoded in
    training.
    A pure function of the run's settings, so a resumed run and a stacked member score the same
    epochs. (The default run: 500 / (2,000 · 4 / 8) → every epoch; 2,000 points under the ELBO:
    every 2nd; a 160-point toy run: every 25th.)"""
    k = config.k if get_objective(objective_name(model, config)).uses_k else 1
    return max(1, math.ceil(points * HELDOUT_SHARE / (n * k)))


def heldout_columns(model: LatentModel) -> tuple[str, ...]:
    """The history columns :func:`heldout_terms` fills for this model."""
    return HELDOUT_COLUMNS if isinstance(model, VariationalModel) else ("heldout_recon",)




def as_heldout(model: LatentModel, heldout: HeldOut | Tensor | None) -> HeldOut | None:
    """``heldout`` as the loop scores it: a ``HeldOut`` cut to its fixed subset, checked against
    the model (width, conditions, dtype) before the first step, not at the first epoch's end."""
    if heldout is None:
        return None
    if isinstance(heldout, Tensor):
        heldout = HeldOut(heldout)
    if not isinstance(heldout, HeldOut):
        raise TrainingDataError(f"heldout must be a vaelab.train.HeldOut or an (M, D) tensor, got "
                                f"{type(heldout).__name__}")
    try:
        check_training_data(model, heldout.x, heldout.c)
    except TrainingDataError as err:
        raise TrainingDataError(f"held-out points: {err}") from None
    if (heldout.c is None) != (getattr(model, "cond_dim", 0) == 0):
        raise TrainingDataError("held-out points need their conditions c exactly when the model is conditional "
                                f"(this model's cond_dim is {getattr(model, 'cond_dim', 0)})")
    return HeldOut.subset(heldout.x, heldout.c)


@torch.no_grad()
def heldout_terms(model: LatentModel, heldout: HeldOut) -> dict[str, float]:
    """The model's β = 1 bound on the held-out points, whatever objective it trains with:

        heldout_elbo  = mean over x of  E_q(z|x)[log p(x|z)] − KL(q(z|x) ‖ p(z))   (the ELBO, as
                        metrics.json's "elbo": a lower bound on log p(x), higher is better),
        heldout_recon = −E_q[log p(x|z)],   heldout_kl = KL(q(z|x) ‖ p(z)),

    so that −heldout_elbo = heldout_recon + heldout_kl sits on the scale of the training
    columns recon + kl. One draw z ~ q(z|x) per point (``objectives.elbo``), from a generator
    seeded with ``HELDOUT_SEED`` afresh at every call: the same draws every epoch, for every
    member, and none from the training generator. An autoencoder (no q(z|x)) gets
    ``heldout_recon`` = −log p(x|f(x)) alone. Nats per point, float64 means over the points.
    """
    x, c = heldout.x, heldout.c
    generator = torch.Generator(device=x.device).manual_seed(HELDOUT_SEED)
    is_vae = isinstance(model, VariationalModel)
    recon = kl = 0.0
    for start in range(0, len(x), HELDOUT_CHUNK):
        xb = x[start:start + HELDOUT_CHUNK]
        cb = None if c is None else c[start:start + HELDOUT_CHUNK]
        out = (elbo(model, xb, cb, beta=1.0, generator=generator) if isinstance(model, VariationalModel)
               else ae_loss(model, xb, cb))
        recon += float(out.terms["recon"]) * len(xb)
        kl += float(out.terms["kl"]) * len(xb)
    recon, kl = recon / len(x), kl / len(x)
    if not is_vae:
        return {"heldout_recon": recon}
    return {"heldout_elbo": -(recon + kl), "heldout_recon": recon, "heldout_kl": kl}


def check_training_data(model: LatentModel, x: Tensor, c: Tensor | None) -> None:
    """Refuse what fit() cannot train on, naming what is wrong, before anything is drawn or updated."""
    if x.ndim != 2:
        raise TrainingDataError(f"x must be a (N, D) tensor of training points; got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise TrainingDataError("x has 0 rows: fit() needs at least one training point")
    if x.shape[1] != model.x_dim:
        raise TrainingDataError(
            f"x has {x.shape[1]} columns but the model was built for x_dim = {model.x_dim}; pass data of "
            f"width {model.x_dim}, or build the model for this data with build_model(config, {x.shape[1]})"
        )
    if c is not None and c.shape[0] != n:
        raise TrainingDataError(f"x has {n} rows but c has {c.shape[0]}; give one condition per training point")
    weights = next(model.parameters(), None)
    for name, t in (("x", x), ("c", c)):
        if t is None:
            continue
        if t.is_meta:  # (audit AP07: "Tensor.item() cannot be called on meta tensors")
            raise TrainingDataError(f"{name} is on the meta device, which holds shapes but no values; pass a "
                                    "tensor of real data")
        if weights is not None and t.dtype != weights.dtype:  # (audit AP09: torch's "mat1 and mat2 ...")
            raise TrainingDataError(f"{name} is {str(t.dtype).removeprefix('torch.')} but the model's weights are "
                                    f"{str(weights.dtype).removeprefix('torch.')}; convert it ({name}.float() for "
                                    "float32) or the model")
    for name, t in (("x", x), ("c", c)):
        if t is None or not t.is_floating_point() or t.numel() == 0:
            continue
        # One reduction pass: min and max propagate NaN and show ±inf, so both finite means every
        # value is (a full isfinite mask is built only to name the first bad value).
        if bool(torch.isfinite(torch.stack(t.aminmax())).all()):
            continue
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            row, *col = (int(i) for i in bad.nonzero()[0])
            where = f"row {row}" + (f", column {col[0]}" if col else "")
            # A NaN here would surface as a diverged loss, and advice about the learning rate.
            raise TrainingDataError(
                f"{name} holds {int(bad.sum())} NaN or infinite values (first at {where}); remove or impute "
                "them before training (values beyond ±3.4e38 become inf in float32)"
            )


def _nonfinite_term(loss: float, terms: dict[str, float], grad_norm: float) -> str:
    """Which part of a step went non-finite: the reconstruction, KL or another named term, the
    objective built from finite terms (β·KL, the IWAE bound), or only the gradients."""
    words = {"recon": "reconstruction", "kl": "KL"}
    bad = [words.get(name, name) for name, v in terms.items() if not math.isfinite(v)]
    if bad:
        return " and ".join(bad)
    return "loss" if not math.isfinite(loss) else "gradients"


# Data beyond this magnitude are named as the likely cause of a non-finite loss: the Gaussian
# likelihood squares them (float32 overflows at ±1.8e19 squared), and no learning rate helps.
LARGE_DATA = 1e6


def _data_scale(x: Tensor) -> float:
    """The largest |value| of the training data (one pass, only when training has failed)."""
    return float(x.detach().abs().amax()) if x.is_floating_point() and x.numel() else 0.0


def _divergence_advice(term: str, model: LatentModel, config: TrainConfig, data_scale: float = 0.0) -> str:
    """What to change when training stops on a non-finite value. A setting that is itself
    infinite is named first: no learning rate fixes β = inf or σ² = inf; then data so large
    that the reconstruction term overflows (audit UF24, UF25: 1e30 was blamed on the learning rate)."""
    mcfg = model.config
    if data_scale >= LARGE_DATA and math.isfinite(config.lr) and ("reconstruction" in term or term == "loss"):
        return (f"The training data reach {data_scale:.3g} in absolute value: the reconstruction term squares "
                "values that large beyond what float32 holds, whatever the learning rate; standardise the data "
                "first (subtract each column's mean and divide by its standard deviation).")
    uses_beta = get_objective(objective_name(model, config)).uses_beta  # β weighs the ELBO's KL and IWAE's log w
    gaussian_fixed = mcfg.likelihood == "gaussian"
    if not math.isfinite(config.lr):
        return f"train.lr (--lr) is {config.lr}: use a finite learning rate such as 1e-3."
    if uses_beta and not math.isfinite(config.beta) and term in ("KL", "loss", "reconstruction and KL"):
        return (f"train.beta (--beta) is {config.beta}: the KL term β·KL is then infinite (NaN where KL = 0); "
                "use a finite β such as 4.")
    if term == "loss":  # finite terms, non-finite total: β·KL overflowed, or the IWAE bound did
        tips = ["a smaller --beta"] if uses_beta and config.beta > 1 else []
        tips += ["a smaller learning rate (--lr)"] + (["a smaller --k"] if config.k > 1 else [])
        return "The terms were finite, the objective built from them was not: try " + " or ".join(tips) + "."
    if gaussian_fixed and not math.isfinite(mcfg.recon_var) and "reconstruction" in term:
        return (f"model.recon_var (--recon-var) is {mcfg.recon_var}: log p(x|z) is then −inf for every x; "
                "use a finite σ² such as 0.1 (a smaller σ² weights the reconstruction more).")
    tips = ["a smaller learning rate (--lr)", "gradient clipping (--grad-clip)"]
    if "reconstruction" in term and gaussian_fixed:
        tips.append("a larger --recon-var (a small σ² makes the reconstruction term steep)")
    if "KL" in term:
        tips.append("a bounded encoder scale (--scale softplus)")
        if uses_beta and config.beta > 1:
            tips.append("a smaller --beta")
    if config.nonfinite == "stop":
        tips.append("--nonfinite skip to step over rare bad batches")
    return "Try " + ", ".join(tips[:-1]) + f" or {tips[-1]}."


def _row(m: Member, epoch: int, step: int, names: list[str], sums: list[float], seen: int, div: float,
         seconds: float, beta: float, grad_norm: float) -> dict[str, float]:
    """One history row: the batch-size-weighted means of the loss and of every named term."""
    # An epoch whose every step was skipped has no loss to report: NaN, not 0.
    loss, *means = [v / seen for v in sums] if seen else (math.nan,) * (1 + len(names))
    return {"epoch": epoch, "step": step, "loss": loss, **dict(zip(names, means, strict=True)), "diversity": div,
            "seconds": seconds, "lr": m.lr, "skipped": m.skipped, "grad_norm": grad_norm, "beta": beta}


__all__ = ["Executor", "HeldOut", "Member", "MemberResult", "StepInfo", "TrainingDataError", "TrainingDiverged",
           "TrainingInterrupted", "as_heldout", "check_training_data", "diversity", "heldout_every", "heldout_terms",
           "make_members", "train_members"]
