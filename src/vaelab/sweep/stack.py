"""Vectorized training: M configurations of one architecture trained as one stacked model.

Members share the architecture (family, nets, sizes, likelihood kind, objective, k, batch size
and budget) and may differ in β and its schedule, σ² (λ_rec), the learning rate and its
schedule, the seed, gradient clipping, the diversity sample count and the checkpoint cadence.
Each training step evaluates the objective of every member at once: the members' parameters
live stacked along a new leading dimension (one (M, ...) leaf per parameter, for the whole
training) and the one objective of ``vaelab.objectives`` runs under ``torch.func.vmap`` over
``functional_call`` of a template model, so every member sees exactly the computation
``train.fit`` does, on its own batch.

Exactness. ``fit_stack`` gives every member the weights ``train.fit`` gives it alone, within
float tolerance (tests/test_sweep_stack.py), because each member keeps everything fit keeps:

- its own ``torch.Generator`` seeded with its ``train.seed``, drawing in fit's order: the
  epoch's binarization and permutation, then each step's reparameterisation noise. One dry run
  per batch shape records the shapes of the objective's N(0, I) draws (``NoiseTape``); each
  step draws them from every member's generator into one (M, ...) tensor, and the vmapped
  objective reads its member's row off the tape. An objective that draws otherwise
  (``torch.rand``, ``torch.multinomial``) is replayed call by call by ``_MemberDraws``;
- its own rows of the stacked parameters, copied back into ``models[i]`` wherever fit's
  model would be read (the diversity column, checkpoints, a stop, the end), and its own
  Adam: its rows of the stacked moments, stepped by the fused kernel on its row views with
  its own learning rate (one call per distinct learning rate), which is fit's update bit for
  bit; the state it hands out is a ``torch.optim.Adam`` state_dict that resumes with ``train.fit``;
- its own history rows, diversity column, checkpoints and resume state.

What is not bitwise equal: the vmapped forward and backward (batched matrix products, sums
over the batch) may round in another order than the unbatched ones, about one float32 ulp
per step that Adam carries on; after tens of steps the weights agree to ~1e-5 (see the
test's tolerance). On the default 2-D run the gap grows with the steps where training is
chaotic (small β: up to 2.8e-4 after 160 steps of 8 β values from 1/16 to 16).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal
from torch.func import functional_call, vmap
from torch.optim.adam import adam
from torch.overrides import TorchFunctionMode

from vaelab.checkpoint import TrainState
from vaelab.config import ModelConfig, TrainConfig, flag_name
from vaelab.data.pixels import binarize
from vaelab.distributions import NoiseTape
from vaelab.errors import InputError
from vaelab.history import History
from vaelab.likelihoods import GaussianFixed, Likelihood
from vaelab.models import LatentModel
from vaelab.objectives import OBJECTIVES, ObjectiveOutput
from vaelab.schedules import beta_at, check_schedule
from vaelab.train import (
    StepInfo,
    TrainingDiverged,
    TrainingInterrupted,
    _check_training_data,
    _divergence_advice,
    _nonfinite_term,
    _row,
    diversity,
    objective,
    total_steps,
)


@dataclass
class MemberResult:
    """How one member of a stack ended.

    history: its per-epoch rows (the failing epoch last when it diverged).
    state: resumes this member exactly with ``train.fit`` or ``fit_stack`` (for a diverged
        member: the state of its last checkpoint, the one its run directory holds).
    error: the member stopped on a non-finite value (the others went on); None otherwise.
    """

    history: History
    state: TrainState
    error: TrainingDiverged | None = None


class StackInterrupted(TrainingInterrupted):
    """``should_stop`` asked ``fit_stack`` to stop: every running member's checkpoint of the
    current step went to ``on_checkpoint``; ``results`` holds each member's history and state
    (``fit_stack`` with those states and histories resumes exactly)."""

    def __init__(self, step: int, epoch: int, results: list[MemberResult]) -> None:
        running = next((r for r in results if r.error is None), results[0])
        super().__init__(step, epoch, running.state, running.history)
        self.results = results


# Train settings that may differ between the members of one stack; every other train setting
# (and every model setting but recon_var) must be equal.
PER_MEMBER_TRAIN = frozenset({
    "beta", "lr", "lr_schedule", "seed", "checkpoint_every", "diversity_samples", "grad_clip",
    "beta_schedule", "warmup_epochs", "warmup_steps", "cycles", "cycle_ratio",
})
PER_MEMBER_MODEL = frozenset({"recon_var"})
_WHY = {"model.latent_dim": "latent sizes differ", "model.kind": "model families differ",
        "model.net": "nets differ", "model.hidden": "hidden layer sizes differ",
        "model.likelihood": "likelihoods differ", "train.objective": "objectives differ",
        "train.batch_size": "batch sizes differ", "train.epochs": "budgets differ", "train.steps": "budgets differ",
        "train.free_bits": "free bits differ (the ELBO takes another code path at λ = 0)"}


def can_stack(model_configs: Sequence[ModelConfig], train_configs: Sequence[TrainConfig]) -> str | None:
    """None when these members can train as one stacked model, else the reason ("latent sizes differ").

    Members may differ only in the settings of ``PER_MEMBER_TRAIN`` and in ``model.recon_var``;
    ``nonfinite = "skip"`` (whose halved learning rates make members leave lockstep) is not stacked.
    """
    if len(model_configs) != len(train_configs):
        return f"{len(model_configs)} model configs but {len(train_configs)} train configs"
    if not model_configs:
        return "no members"
    for section, configs, free in (("model", model_configs, PER_MEMBER_MODEL),
                                   ("train", train_configs, PER_MEMBER_TRAIN)):
        dumps = [cfg.model_dump() for cfg in configs]
        for name in dumps[0]:
            if name in free:
                continue
            values = [d[name] for d in dumps]
            if any(v != values[0] for v in values[1:]):
                dotted = f"{section}.{name}"
                shown = ", ".join(dict.fromkeys(repr(v) for v in values))
                return f"{_WHY.get(dotted, flag_name(dotted) + ' differs')} ({shown})"
    if train_configs[0].nonfinite == "skip":
        return ("nonfinite = 'skip' is not stacked (each skip halves one member's learning rate); "
                "train these members one by one with train.fit, or use nonfinite = 'stop'")
    return None


# The most floats one stacked hidden activation (members × rows × width) should hold. Beyond a
# few MiB it leaves the CPU's caches and each member costs more than in a smaller stack:
# benchmarks/bench_sweep.py, default 2-D run (rows 256 × k 4, width 256), 2 threads, time per
# member as a fraction of a solo run: 0.73 for 4 members, 0.67 for 8, 0.77 for 16, 1.01 for 32.
STACK_FLOATS = 2 ** 21


def stack_limit(model: ModelConfig, train: TrainConfig) -> int:
    """How many members of this shape to stack at most: STACK_FLOATS over the floats of one
    member's widest hidden activation (batch rows, times k where the objective draws k samples
    per point, times the widest hidden layer); 8 for the default 2-D run. Conv nets are not
    capped (their activation sizes depend on the image)."""
    if model.net != "mlp" or not model.hidden:
        return 2 ** 31
    objective = OBJECTIVES.get(train.objective)
    rows = train.batch_size * (train.k if objective is not None and objective.uses_k else 1)
    return max(1, STACK_FLOATS // (rows * max(model.hidden)))


class _MemberDraws(TorchFunctionMode):
    """Per-member randomness inside ``vmap``.

    A random function (``torch.randn``, ``torch.rand``, ...) called with ``generator=token`` is
    called once per member with that member's generator: M draws of exactly the shape and in
    exactly the order ``train.fit`` makes them, stacked (M, ...), of which member ``index``
    (a vmapped 0-dim tensor) reads its own row. Under ``vmap(randomness="same")`` each of these
    calls is an ordinary, unbatched draw from the generator given.
    """

    def __init__(self, token: torch.Generator, generators: Sequence[torch.Generator], index: Tensor) -> None:
        super().__init__()
        self.token, self.generators, self.index = token, generators, index

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if kwargs.get("generator") is not self.token:
            return func(*args, **kwargs)
        try:
            draws = torch.stack([func(*args, **{**kwargs, "generator": g}) for g in self.generators])  # (M, ...)
        except RuntimeError as err:
            name = getattr(func, "__name__", str(func))
            raise InputError(f"stacked training cannot draw torch.{name} from tensors that differ between members "
                             f"({err}); train these members one by one with train.fit") from None
        return draws[self.index]


class _MemberGaussian(Likelihood):
    """``GaussianFixed`` with σ a tensor: under vmap each member's own σ = √recon_var.

    σ is computed in float64 and rounded once to the model's dtype, as ``GaussianFixed`` does
    with its Python float, so each member's p(x|z) equals its solo one.
    """

    def __init__(self, scale: Tensor) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, params: Tensor) -> Distribution:
        return Independent(Normal(params, self.scale, validate_args=False), 1, validate_args=False)


class _StackedObjective(nn.Module):
    """The training objective of ``model`` as a module, so ``functional_call`` can swap in each
    member's parameters (``model.<name>``) and vmap can map over them."""

    def __init__(self, model: LatentModel, config: TrainConfig, token: torch.Generator) -> None:
        super().__init__()
        self.model, self.config, self.token = model, config, token

    def forward(self, x: Tensor, c: Tensor | None, beta: Tensor, scale: Tensor | None,
                noise: NoiseTape | None = None) -> ObjectiveOutput:
        """x (B, D), c (B, C) or None, beta () and σ () of one member (vmap adds the M); ``noise``:
        the member's N(0, I) draws on a tape, else draws come from the placeholder generator."""
        likelihood = self.model.likelihood
        if scale is not None:
            self.model.likelihood = _MemberGaussian(scale)
        try:
            # β is a 0-dim tensor (one value per member under vmap): the objectives only multiply
            # by it, and float32 · β gives the same number for β a float or a float32 tensor.
            generator = self.token if noise is None else cast(torch.Generator, noise)  # a tape stands in for it
            return objective(self.model, x, c, self.config, generator, cast(float, beta))
        finally:
            self.model.likelihood = likelihood


def _fused(model: nn.Module) -> bool:
    """Whether fit's Adam for this model is the fused one (float32 / float64 parameters on CPU or CUDA)."""
    return all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
               for p in model.parameters())


def _check_members(models: Sequence[LatentModel], configs: Sequence[TrainConfig],
                   states: Sequence[TrainState | None] | None,
                   histories: Sequence[History | None] | None) -> None:
    m = len(models)
    if m == 0:
        raise InputError("fit_stack needs at least one member (models is empty)")
    if len(configs) != m:
        raise InputError(f"fit_stack got {m} models but {len(configs)} train configs; give one config per model")
    for what, seq in (("states", states), ("histories", histories)):
        if seq is not None and len(seq) != m:
            raise InputError(f"fit_stack got {m} models but {len(seq)} {what}; give one per model (None: fresh)")
    reason = can_stack([model.config for model in models], configs)
    if reason is not None:
        raise InputError(f"these members cannot train as one stack: {reason}; train them as separate groups")
    first = models[0]
    shapes = {name: p.shape for name, p in first.named_parameters()}
    for i, model in enumerate(models[1:], start=1):
        if type(model) is not type(first) or {n: p.shape for n, p in model.named_parameters()} != shapes:
            raise InputError(f"model {i} ({type(model).__name__}) does not have model 0's parameters; the "
                             "members of a stack are built from equal model configs on the same data")
        if model is first or any(p is q for p, q in zip(model.parameters(), first.parameters(), strict=True)):
            raise InputError(f"models 0 and {i} share their parameters; give each member its own model")
    given = [s if s is not None else TrainState() for s in (states or [None] * m)]
    where = {(s.step, s.epoch, s.batch, s.epoch_rng is None) for s in given}
    if len(where) > 1:
        raise InputError("the members' states are at different points of training (steps "
                         + ", ".join(str(s.step) for s in given) + "); a stack trains in lockstep: resume these "
                         "members one by one with train.fit")


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
) -> list[MemberResult]:
    """Train ``models[i]`` with ``configs[i]`` on x (N, D) [conditions c (N, C)], all as one stack.

    Each member ends with the weights, history and state ``train.fit(models[i], x, configs[i])``
    gives it (within float tolerance; see the module docstring); the members must pass
    ``can_stack``. ``states`` / ``histories`` resume members (weights already loaded), also from
    the middle of an epoch; the members' states must be at the same step.

    Callbacks get the member's index: ``on_step(i, info)`` after each of member i's steps, and
    ``on_checkpoint(i, models[i], history_i, state_i)`` every ``checkpoint_every`` epochs of that
    member and at the end: ``models[i]`` is an ordinary LatentModel holding member i's weights.

    A member whose loss, terms or gradients go NaN or infinite stops alone, as fit's "stop"
    policy does (its history ends with the failing epoch; ``MemberResult.error`` holds the
    TrainingDiverged); the others go on. ``should_stop`` (asked before every step) hands every
    running member's checkpoint of this step to ``on_checkpoint`` and raises StackInterrupted.
    The history's ``seconds`` column counts the stack's wall time (the members train together).

    Returns:
        One MemberResult per member, in the order of ``models``.
    """
    _check_members(models, configs, states, histories)
    m = len(models)
    template = models[0]
    _check_training_data(template, x, c)
    if not dynamic_binarization:
        template.likelihood.check_support(x, "the training data")
    n, device = x.shape[0], x.device
    config0 = configs[0]
    bs = config0.batch_size
    n_batches = math.ceil(n / bs)
    budget = total_steps(config0, n)
    for config in configs:
        check_schedule(config, n_batches, budget)

    run_states = [s if s is not None else TrainState() for s in (states or [None] * m)]
    run_histories = [h if h is not None else History() for h in (histories or [None] * m)]
    generators = [torch.Generator(device=device).manual_seed(cfg.seed) for cfg in configs]
    optimizers = []
    for model, state, generator, config in zip(models, run_states, generators, configs, strict=True):
        # fit's optimizer, kept for its settings and its state_dict format: the steps themselves
        # run on the stacked tensors below (``adam_step``).
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=_fused(model) or None)
        if state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
        if state.rng is not None:
            generator.set_state(state.rng)
        optimizers.append(optimizer)
    names = [name for name, p in template.named_parameters() if p.requires_grad]
    params = [[dict(model.named_parameters())[name] for name in names] for model in models]  # in names' order
    buffer_names = [name for name, _ in template.named_buffers()]
    # The members' parameters live stacked for the whole training: one (M, ...) leaf per
    # parameter, so the forward needs no torch.stack and the backward no unbind, and one fused
    # Adam call per learning rate updates the members' rows (``clip_and_step``). models[i] gets
    # its rows back (``sync``) where fit's model would be read: the diversity column,
    # checkpoints, a stop, the end.
    stacked = [torch.stack([params[i][j].detach() for i in range(m)]).requires_grad_() for j in range(len(names))]
    stacked_buffers = {"model." + name: torch.stack([dict(model.named_buffers())[name] for model in models])
                       for name in buffer_names}
    # Adam's moments, stacked the same way; the step count is shared (members train in lockstep).
    exp_avgs = [torch.zeros_like(t) for t in stacked]
    exp_avg_sqs = [torch.zeros_like(t) for t in stacked]
    adam_steps = {0}
    for i, optimizer in enumerate(optimizers):
        for j, q in enumerate(params[i]):
            moments = optimizer.state.get(q)
            if moments:
                exp_avgs[j][i].copy_(moments["exp_avg"])
                exp_avg_sqs[j][i].copy_(moments["exp_avg_sq"])
                adam_steps.add(int(moments["step"]))
        optimizer.state.clear()  # the stacked moments are the live ones; ``adam_state`` writes them back
    adam_step = max(adam_steps)
    fused = _fused(template)
    n_params = len(stacked)
    with torch.no_grad():  # views the optimizer updates in place, outside autograd
        param_rows = [t.unbind(0) for t in stacked]  # [parameter][member]
    avg_rows = [t.unbind(0) for t in exp_avgs]
    sq_rows = [t.unbind(0) for t in exp_avg_sqs]
    # Each member's step count per parameter, as fit's Adam holds it; adam increments them in place.
    adam_steps_of = [[torch.tensor(float(adam_step), dtype=torch.float32, device=device if fused else "cpu")
                      for _ in range(n_params)] for _ in range(m)]
    group0 = optimizers[0].param_groups[0]
    beta1, beta2 = group0["betas"]
    adam_eps = group0["eps"]
    last_lr = [optimizer.param_groups[0]["lr"] for optimizer in optimizers]  # fit's group lr
    elapsed = [h.last["seconds"] if h.last else 0.0 for h in run_histories]
    last_saved = [copy.copy(s) for s in run_states]  # each member's last checkpoint (its MemberResult.state)
    errors: list[TrainingDiverged | None] = [None] * m
    dtype = next(template.parameters()).dtype

    # One template module evaluates every member: its parameters are replaced by the stacked
    # ones in functional_call; a fixed-variance Gaussian with per-member σ² gets σ as a tensor.
    token = torch.Generator(device=device)  # placeholder: _MemberDraws replaces it by each member's
    stacked_objective = _StackedObjective(copy.deepcopy(template), config0, token)
    recon_vars = [model.config.recon_var for model in models]
    member_scale = isinstance(template.likelihood, GaussianFixed) and len(set(recon_vars)) > 1
    scales = torch.tensor([math.sqrt(v) for v in recon_vars], dtype=torch.float64).to(device=device, dtype=dtype)

    def learning_rate(i: int, step: int) -> float:
        """fit's learning rate of member i at the 0-based step: constant or cosine decay to 0."""
        config = configs[i]
        if config.lr_schedule == "cosine":
            return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / budget))
        return config.lr

    def beta_mean(i: int, first: int, stop: int) -> float:
        return sum(beta_at(t, configs[i], n_batches, budget) for t in range(first, stop)) / max(1, stop - first)

    def snapshot(i: int, complete: bool) -> TrainState:
        s = run_states[i]
        # A copy: Adam updates its moments in place, and a diverged member's result is the state
        # of a checkpoint taken steps before it stopped.
        return TrainState(step=s.step, epoch=s.epoch, optimizer=adam_state(i),
                          rng=generators[i].get_state(), complete=complete, skips=0)

    def adam_state(i: int) -> dict[str, Any]:
        """Member i's Adam state_dict, as fit's torch.optim.Adam would hold it: its rows of the
        stacked moments (copies), the shared step count and its last learning rate."""
        optimizer = optimizers[i]
        if adam_step > 0:
            for j, q in enumerate(params[i]):
                optimizer.state[q] = {
                    "step": torch.tensor(float(adam_step), dtype=torch.float32, device=q.device if fused else "cpu"),
                    "exp_avg": exp_avgs[j][i].clone(), "exp_avg_sq": exp_avg_sqs[j][i].clone()}
        for group in optimizer.param_groups:
            group["lr"] = last_lr[i]
        saved = copy.deepcopy(optimizer.state_dict())
        optimizer.state.clear()
        return saved

    @torch.no_grad()
    def sync(i: int) -> None:
        """models[i] gets its rows of the stacked parameters."""
        for j, q in enumerate(params[i]):
            q.copy_(stacked[j][i])

    def results() -> list[MemberResult]:
        # The last checkpoint of each member: the final one, the interrupted step's, or, for a
        # diverged member, the last good one.
        return [MemberResult(run_histories[i], last_saved[i], errors[i]) for i in range(m)]

    def checkpoint(i: int, state: TrainState) -> None:
        last_saved[i] = state
        if on_checkpoint is not None:
            models[i].eval()
            on_checkpoint(i, models[i], run_histories[i], state)
            models[i].train()

    def member_objective(p: dict[str, Tensor], xb: Tensor, cb: Tensor | None, beta: Tensor, scale: Tensor | None,
                         index: Tensor, noise: list[Tensor] | None) -> dict[str, Tensor]:
        """One member's objective: parameters p, batch xb (B, D), its draws ``noise`` (or None:
        drawn by ``_MemberDraws``); returns loss () and values (1 + T,)."""
        if noise is not None:
            tape = NoiseTape(noise)
            out = functional_call(stacked_objective, p, (xb, cb, beta, scale, tape))
            if tape.used != len(noise):
                raise InputError(f"the objective drew {tape.used} of the {len(noise)} noise tensors planned for this "
                                 "batch shape; train these members one by one with train.fit")
        else:
            with _MemberDraws(token, draws_from, index):
                out = functional_call(stacked_objective, p, (xb, cb, beta, scale))
        term_names[:] = list(out.terms)
        return {"loss": out.loss, "values": torch.stack([out.loss.detach(), *(t.detach() for t in out.terms.values())])}

    @torch.no_grad()
    def clip_and_step(stepped: list[int], grads: list[Tensor | None], norms: Tensor) -> None:
        """fit's gradient clipping and Adam step for the members ``stepped``; grads (M, ...) each, norms (M,)."""
        nonlocal adam_step
        if any(configs[i].grad_clip is not None for i in stepped):
            # clip_grads_with_norm_: g · min(1, max_norm / (‖g‖ + 1e-6)), computed as torch does
            # (reciprocal, then times max_norm); a member without clipping gets max_norm = inf: factor 1.
            max_norm = torch.tensor([math.inf if cfg.grad_clip is None else cfg.grad_clip for cfg in configs],
                                    dtype=norms.dtype, device=device)  # (M,)
            factor = torch.clamp((norms + 1e-6).reciprocal() * max_norm, max=1.0)  # (M,)
            for g in grads:
                if g is not None:
                    g.mul_(factor.view(m, *[1] * (g.dim() - 1)))
        # One fused Adam call per learning rate over the members' rows (views: updated in place).
        # Not one call on the whole (M, ...) tensors: the fused kernel computes a vector-width
        # body and a scalar tail with different roundings (a 4-wide bias is all tail alone, all
        # body stacked), which moves the last bit; on the rows each member's update is fit's, bit for bit.
        used = [j for j, g in enumerate(grads) if g is not None]  # fit's Adam skips parameters without a gradient
        grad_rows = {j: cast(Tensor, grads[j]).unbind(0) for j in used}
        by_lr: dict[float, list[int]] = {}
        for i in stepped:
            by_lr.setdefault(last_lr[i], []).append(i)
        for lr, group in by_lr.items():
            adam([param_rows[j][i] for i in group for j in used],
                 [grad_rows[j][i] for i in group for j in used],
                 [avg_rows[j][i] for i in group for j in used],
                 [sq_rows[j][i] for i in group for j in used],
                 [], [adam_steps_of[i][j] for i in group for j in used],
                 foreach=None, fused=fused or None, amsgrad=False, beta1=beta1, beta2=beta2, lr=lr,
                 weight_decay=0.0, eps=adam_eps, maximize=False)
        adam_step += 1

    plans: dict[tuple[tuple[int, ...], tuple[int, ...] | None], list[tuple[tuple[int, ...], torch.dtype]] | None] = {}

    def noise_plan(xb0: Tensor, cb0: Tensor | None) -> list[tuple[tuple[int, ...], torch.dtype]] | None:
        """The shapes of the N(0, I) draws one member's objective makes on a batch like xb0 (B, D),
        in order, from a dry run of the template with a throwaway generator; None where it draws
        in another way (torch.rand, torch.multinomial), which ``_MemberDraws`` then replays."""
        key = (tuple(xb0.shape), None if cb0 is None else tuple(cb0.shape))
        if key not in plans:
            tape = NoiseTape(record=torch.Generator(device=device).manual_seed(0))
            try:
                with torch.no_grad():
                    stacked_objective(xb0, cb0, torch.tensor(config0.beta, dtype=dtype, device=device),
                                      scales[0] if member_scale else None, tape)
                plans[key] = tape.shapes
            except TypeError:  # a draw the tape cannot stand in for: a torch.Generator argument got a tape
                plans[key] = None
        return plans[key]

    term_names: list[str] = ["recon", "kl"]  # the objective's term names; every step sets them
    draws_from: list[torch.Generator] = []  # the running members' generators, in stack order
    step = run_states[0].step
    active = [i for i in range(m) if step < budget]
    for model in models:
        model.train()
    while step < budget and active:
        start = time.perf_counter()
        # The epoch's draws, member by member in fit's order: [binarization,] permutation.
        epoch_rngs: dict[int, Tensor] = {}
        perms, x_epochs = [], []
        sums: dict[int, list[float]] = {}  # Σ batch size · (loss, terms...), float64 on the host as fit's
        seen, norm_max, starts = dict.fromkeys(active, 0), dict.fromkeys(active, 0.0), dict.fromkeys(active, start)
        first_batch = run_states[active[0]].batch if run_states[active[0]].epoch_rng is not None else 0
        for i in active:
            state, generator = run_states[i], generators[i]
            if state.epoch_rng is not None:  # resuming in the middle of an epoch, as fit does
                epoch_rngs[i], rng = state.epoch_rng, generator.get_state()
                generator.set_state(state.epoch_rng)
            else:
                epoch_rngs[i] = generator.get_state()
            # A binarized x is {0, 1}: kept as bool, a quarter of float32's memory for M copies.
            x_epochs.append(binarize(x, generator).bool() if dynamic_binarization else x)
            perms.append(torch.randperm(n, generator=generator, device=device))
            if state.epoch_rng is not None:
                generator.set_state(rng)
                seen[i], norm_max[i] = state.epoch_seen, state.grad_norm_max
                if state.epoch_sums is not None:
                    sums[i] = state.epoch_sums.double().tolist()
                starts[i] = start - state.epoch_seconds
                state.epoch_rng = None
        member_of = list(active)  # row r of perms / x_epochs belongs to member member_of[r]
        perm = torch.stack(perms)  # (M', N)
        x_all = torch.stack(x_epochs) if dynamic_binarization else None  # (M', N, D) bool
        epoch_first_step = step - first_batch
        for b in range(first_batch, n_batches):
            if step >= budget or not active:
                break
            rows = torch.tensor([member_of.index(i) for i in active], device=device)
            if should_stop is not None and should_stop():
                for i in active:
                    sync(i)
                    mid = snapshot(i, False)
                    mid.epoch_rng, mid.batch = epoch_rngs[i], b
                    mid.epoch_sums = torch.tensor(sums.get(i, []), dtype=torch.float64)
                    mid.epoch_seen, mid.epoch_skipped = seen[i], 0
                    mid.epoch_seconds, mid.grad_norm_max = time.perf_counter() - starts[i], norm_max[i]
                    checkpoint(i, mid)
                for model in models:
                    model.eval()
                raise StackInterrupted(step, run_states[active[0]].epoch + 1, results())
            rows_all = torch.tensor(active, device=device)  # the running members' rows of the stacked tensors
            idx = perm[rows, b * bs:(b + 1) * bs]  # (M', B)
            xb = x_all[rows.unsqueeze(1), idx].to(x.dtype) if x_all is not None else x[idx]  # (M', B, D)
            cb = None if c is None else c[idx]  # (M', B, C)
            beta = torch.tensor([beta_at(step, configs[i], n_batches, budget) for i in active], dtype=dtype,
                                device=device)  # (M',)
            everyone = len(active) == m
            # (M', ...) each: all rows while every member runs, else the running members' rows
            # (indexing is differentiable: their gradients land in their rows of the leaves).
            p = {"model." + name: t if everyone else t[rows_all] for name, t in zip(names, stacked, strict=True)}
            p.update({name: t if everyone else t[rows_all] for name, t in stacked_buffers.items()})
            index = torch.arange(len(active), device=device)
            draws_from[:] = [generators[i] for i in active]
            plan = noise_plan(xb[0], None if cb is None else cb[0])
            noise: list[Tensor] | None = None
            if plan is not None:
                # Each member's reparameterisation noise from its own generator, in fit's order
                # (member i's draws are the ones fit makes; members draw from separate generators).
                noise = []
                for shape, noise_dtype in plan:
                    draws = torch.empty((len(active), *shape), dtype=noise_dtype, device=device)  # (M', ...)
                    for r, i in enumerate(active):
                        torch.randn(shape, generator=generators[i], out=draws[r])
                    noise.append(draws)
            out = vmap(member_objective,
                       in_dims=(0, 0, None if cb is None else 0, 0, 0 if member_scale else None, 0,
                                None if noise is None else 0),
                       randomness="same")(p, xb, cb, beta, scales[active] if member_scale else None, index, noise)
            for t in stacked:
                t.grad = None
            out["loss"].sum().backward()  # Σ_i loss_i: member i's rows get ∂loss_i alone
            grads = [t.grad for t in stacked]  # (M, ...) each; None for a parameter the objective does not use
            # Each member's gradient norm (fit's get_total_norm: the 2-norm of the per-tensor 2-norms).
            norms = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.reshape(m, -1), dim=1) for g in grads if g is not None]),
                dim=0)  # (M,)
            grad_norms = norms if everyone else norms[rows_all]  # (M',)
            values = out["values"]  # (M', 1 + T)
            host = torch.cat([values, grad_norms.unsqueeze(1).to(values)], dim=1).tolist()  # one sync
            step += 1
            batch_size = idx.shape[1]
            stepped: list[int] = []  # members updated this step, in stack order
            infos: list[StepInfo] = []
            for r, i in enumerate(list(active)):
                loss, *term_values, norm = host[r]
                terms = dict(zip(term_names, term_values, strict=True))
                recon, kl = terms.get("recon", math.nan), terms.get("kl", math.nan)
                state = run_states[i]
                state.step = step
                lr = learning_rate(i, step - 1)
                step_sums = [v * batch_size for v in host[r][:-1]]  # float64, as fit's
                if not all(math.isfinite(v) for v in (loss, *term_values, norm)):
                    # fit's "stop": record the failing epoch, stop this member alone (no update).
                    term = _nonfinite_term(loss, terms, norm)
                    run_histories[i].append(_row(state.epoch + 1, step, term_names, step_sums,
                                                 batch_size, math.nan, elapsed[i] + time.perf_counter() - starts[i],
                                                 lr, 0, norm, beta_mean(i, epoch_first_step, step)))
                    errors[i] = TrainingDiverged(step, state.epoch + 1, run_histories[i], term=term,
                                                 advice=_divergence_advice(term, models[i], configs[i]))
                    sync(i)  # its model holds the weights before the failing step, as fit's does
                    models[i].eval()
                    active.remove(i)
                    continue
                stepped.append(i)
                last_lr[i] = lr
                sums[i] = step_sums if not sums.get(i) else [s + t for s, t in zip(sums[i], step_sums, strict=True)]
                seen[i] += batch_size
                norm_max[i] = max(norm_max[i], norm)
                infos.append(StepInfo(step, budget, state.epoch + 1, loss, recon, kl, lr, False, norm, terms))
            if stepped:
                clip_and_step(stepped, grads, norms)
            if on_step is not None:  # after the update, as fit calls it
                for i, info in zip(stepped, infos, strict=True):
                    on_step(i, info)
        for i in active:
            state, config = run_states[i], configs[i]
            state.epoch += 1
            sync(i)
            models[i].eval()
            # fit's diversity column: its own generator per member and epoch.
            div_gen = torch.Generator(device=device).manual_seed((config.seed * 1_000_003 + state.epoch) % 2**64)
            div = diversity(models[i], config.diversity_samples, div_gen,
                            None if c is None else c[torch.randint(n, (config.diversity_samples,), generator=div_gen,
                                                                    device=device)])
            models[i].train()
            elapsed[i] += time.perf_counter() - starts[i]
            epoch_sums = sums.get(i, [])
            run_histories[i].append(_row(state.epoch, step, term_names, epoch_sums, seen[i], div,
                                         elapsed[i], learning_rate(i, step - 1), 0, norm_max[i],
                                         beta_mean(i, epoch_first_step, step)))
            done = step >= budget
            if done or state.epoch % config.checkpoint_every == 0:
                checkpoint(i, snapshot(i, done))
    for model in models:
        model.eval()
    return results()


__all__ = ["PER_MEMBER_TRAIN", "MemberResult", "StackInterrupted", "can_stack", "fit_stack"]
