"""The stacked executor: M configurations of one architecture trained as one vmapped model.

Members share the architecture (family, nets, sizes, likelihood kind, objective, k, batch size
and budget) and may differ in β and its schedule, σ² (λ_rec), the learning rate and its
schedule, the seed, gradient clipping, the diversity sample count and the checkpoint cadence.
Each training step evaluates every member's ``TrainStep`` at once: the members' parameters
live stacked along a new leading dimension (one (M, ...) leaf per parameter, for the whole
training) and the one step module runs under ``torch.func.vmap`` over ``functional_call``
with each member's parameters, buffers and scalars, so every member sees exactly the
computation the eager executor does, on its own batch.

Exactness. A member ends with the weights ``train.fit`` gives it alone, within float
tolerance (tests/test_sweep_stack.py), because the loop (vaelab.train.loop) keeps everything
per member, and this executor keeps:

- its draws: one dry run per batch shape records the shapes of the step's N(0, I) draws
  (``NoiseTape``); each step draws them from every member's generator into one (M, ...)
  tensor, and the vmapped step reads its member's row off the tape. A step that draws
  otherwise (``torch.rand``, ``torch.multinomial``) is replayed call by call by ``_MemberDraws``;
- its scalars (β and the family's, e.g. an annealed temperature): a 0-dim tensor per member
  under vmap, which the family writes into its buffers (``LatentModel.set_scalars``); the
  buffers are stacked like the parameters, carried from step to step and written back;
- its rows of the stacked parameters and buffers, copied into ``models[i]`` wherever fit's
  model would be read (``sync``: the diversity column, checkpoints, a stop, the end), and
  its own Adam: its rows of the stacked moments, stepped by the fused kernel on its row views
  with its own learning rate (one call per distinct learning rate), which is fit's update bit
  for bit; the state it hands out is a ``torch.optim.Adam`` state_dict that resumes with fit.

What is not bitwise equal: the vmapped forward and backward (batched matrix products, sums
over the batch) may round in another order than the unbatched ones, about one float32 ulp
per step that Adam carries on; after tens of steps the weights agree to ~1e-5 (see the
test's tolerance). On the default 2-D run the gap grows with the steps where training is
chaotic (small β: up to 2.8e-4 after 160 steps of 8 β values from 1/16 to 16).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal
from torch.func import functional_call, vmap
from torch.optim.adam import adam
from torch.overrides import TorchFunctionMode

from vaelab.checkpoint import TrainState
from vaelab.config import ModelConfig, TrainConfig, flag_name
from vaelab.distributions import NoiseTape
from vaelab.errors import InputError
from vaelab.history import History
from vaelab.likelihoods import GaussianFixed, Likelihood
from vaelab.models import LatentModel
from vaelab.objectives import OBJECTIVES
from vaelab.train.eager import fused_adam, make_adam
from vaelab.train.members import Member
from vaelab.train.step import StepContext, TrainStep

# Train settings that may differ between the members of one stack; every other train setting
# (and every model setting but recon_var) must be equal.
PER_MEMBER_TRAIN = frozenset({
    "beta", "lr", "lr_schedule", "seed", "checkpoint_every", "diversity_samples", "grad_clip",
    "beta_schedule", "warmup_epochs", "warmup_steps", "cycles", "cycle_ratio", "adam_betas", "adam_eps",
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
    ``nonfinite = "skip"`` (whose halved learning rates make members leave lockstep) and
    ``compile`` (a compiled step is not vmapped) are not stacked.
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
    if train_configs[0].compile:
        return "compile = true is not stacked (the stack runs its members through vmap, uncompiled)"
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


def check_members(models: Sequence[LatentModel], configs: Sequence[TrainConfig],
                  states: Sequence[TrainState | None] | None,
                  histories: Sequence[History | None] | None) -> None:
    """Refuse members that cannot train as one stack, saying why and what to do."""
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


NoisePlan = list[tuple[tuple[int, ...], torch.dtype]]


class StackedExecutor:
    """Every member's step at once under vmap, and fit's clipping and Adam on each member's rows."""

    def __init__(self, members: Sequence[Member], c: Tensor | None = None) -> None:
        models = [m.model for m in members]
        self.models, self.c, self.n_members = models, c, len(models)
        template = models[0]
        device = next(template.parameters()).device
        self.device, self.dtype = device, next(template.parameters()).dtype
        optimizers = []
        for member in members:
            # fit's optimizer, kept for its settings and its state_dict format: the steps themselves
            # run on the stacked tensors below.
            optimizer = make_adam(member.model, member.config)
            if member.state.optimizer is not None:
                optimizer.load_state_dict(member.state.optimizer)
            optimizers.append(optimizer)
        self.optimizers = optimizers
        names = [name for name, p in template.named_parameters() if p.requires_grad]
        self.names = names
        self.params = [[dict(model.named_parameters())[name] for name in names] for model in models]
        buffer_names = [name for name, _ in template.named_buffers()]
        self.buffers = [[dict(model.named_buffers())[name] for name in buffer_names] for model in models]
        # The members' parameters live stacked for the whole training: one (M, ...) leaf per
        # parameter, so the forward needs no torch.stack and the backward no unbind, and one fused
        # Adam call per learning rate updates the members' rows. ``sync`` copies a member's rows
        # (and its buffers' rows) back into its model.
        m = self.n_members
        self.stacked = [torch.stack([self.params[i][j].detach() for i in range(m)]).requires_grad_()
                        for j in range(len(names))]
        self.stacked_buffers = {"model." + name: torch.stack([self.buffers[i][j] for i in range(m)])
                                for j, name in enumerate(buffer_names)}
        # Adam's moments, stacked the same way; the step count is shared (members train in lockstep).
        self.exp_avgs = [torch.zeros_like(t) for t in self.stacked]
        self.exp_avg_sqs = [torch.zeros_like(t) for t in self.stacked]
        adam_steps = {0}
        for i, optimizer in enumerate(optimizers):
            for j, q in enumerate(self.params[i]):
                moments = optimizer.state.get(q)
                if moments:
                    self.exp_avgs[j][i].copy_(moments["exp_avg"])
                    self.exp_avg_sqs[j][i].copy_(moments["exp_avg_sq"])
                    adam_steps.add(int(moments["step"]))
            optimizer.state.clear()  # the stacked moments are the live ones; ``optimizer_state`` writes them back
        self.adam_step = max(adam_steps)
        self.fused = fused_adam(template)
        with torch.no_grad():  # views the optimizer updates in place, outside autograd
            self.param_rows = [t.unbind(0) for t in self.stacked]  # [parameter][member]
        self.avg_rows = [t.unbind(0) for t in self.exp_avgs]
        self.sq_rows = [t.unbind(0) for t in self.exp_avg_sqs]
        # Each member's step count per parameter, as fit's Adam holds it; adam increments them in place.
        self.adam_steps_of = [[torch.tensor(float(self.adam_step), dtype=torch.float32,
                                            device=device if self.fused else "cpu") for _ in names] for _ in range(m)]
        # Each member's Adam constants (β1, β2, ε), as fit's optimizer holds them.
        self.adam_constants = [(*optimizer.param_groups[0]["betas"], optimizer.param_groups[0]["eps"])
                               for optimizer in optimizers]
        self.last_lr = [optimizer.param_groups[0]["lr"] for optimizer in optimizers]  # fit's group lr
        self.grad_clip = [mem.config.grad_clip for mem in members]
        # One template step evaluates every member: its parameters and buffers are replaced by
        # the stacked ones in functional_call; a fixed-variance Gaussian with per-member σ² gets σ
        # as a tensor.
        self.token = torch.Generator(device=device)  # placeholder: _MemberDraws replaces it by each member's
        self.step_module = TrainStep(copy.deepcopy(template), members[0].config)
        recon_vars = [model.config.recon_var for model in models]
        self.member_scale = isinstance(template.likelihood, GaussianFixed) and len(set(recon_vars)) > 1
        self.scales = torch.tensor([math.sqrt(v) for v in recon_vars],
                                   dtype=torch.float64).to(device=device, dtype=self.dtype)
        self.plans: dict[tuple[tuple[int, ...], tuple[int, ...] | None], NoisePlan | None] = {}
        self.term_names = ["recon", "kl"]
        self.draws_from: list[torch.Generator] = []  # the running members' generators, in stack order
        self.grads: list[Tensor | None] = []
        self.norms = torch.zeros(m)

    def batch(self, members: Sequence[Member], b: int) -> tuple[Tensor, Tensor | None]:
        """(M', B, D) and (M', B, C): each running member's b-th batch of its own shuffle."""
        bs = members[0].config.batch_size
        idx = torch.stack([cast(Tensor, m.perm)[b * bs:(b + 1) * bs] for m in members])  # (M', B)
        x_epoch = members[0].x_epoch
        assert x_epoch is not None
        if all(m.x_epoch is x_epoch for m in members):  # no per-member binarization: one gather
            xb = x_epoch[idx]
        else:  # the members' binarized copies (bool: a quarter of float32's memory)
            xb = torch.stack([cast(Tensor, m.x_epoch)[row] for m, row in zip(members, idx, strict=True)])
        return xb.to(self.dtype), (None if self.c is None else self.c[idx])

    def _member_step(self, p: dict[str, Tensor], xb: Tensor, cb: Tensor | None, scalars: dict[str, Tensor],
                     scale: Tensor | None, index: Tensor, noise: list[Tensor] | None) -> dict[str, Tensor]:
        """One member's step: parameters and buffers p, batch xb (B, D), its scalars and draws
        (``noise``, or None: drawn by ``_MemberDraws``); returns loss () and values (1 + T,)."""
        model = self.step_module.model
        likelihood = model.likelihood
        if scale is not None:
            model.likelihood = _MemberGaussian(scale)
        try:
            if noise is not None:
                tape = NoiseTape(noise)
                out = functional_call(self.step_module, p, (xb, cb, StepContext(0, 0, scalars, tape)))
                if tape.used != len(noise):
                    raise InputError(f"the objective drew {tape.used} of the {len(noise)} noise tensors planned for "
                                     "this batch shape; train these members one by one with train.fit")
            else:
                with _MemberDraws(self.token, self.draws_from, index):
                    out = functional_call(self.step_module, p, (xb, cb, StepContext(0, 0, scalars, self.token)))
        finally:
            model.likelihood = likelihood
        self.term_names = list(out.terms)
        return {"loss": out.loss,
                "values": torch.stack([out.loss.detach(), *(t.detach() for t in out.terms.values())])}

    def _noise_plan(self, xb0: Tensor, cb0: Tensor | None, scalars: dict[str, float]) -> NoisePlan | None:
        """The shapes of the N(0, I) draws one member's step makes on a batch like xb0 (B, D), in
        order, from a dry run of the template with a throwaway generator; None where it draws in
        another way (torch.rand, torch.multinomial), which ``_MemberDraws`` then replays."""
        key = (tuple(xb0.shape), None if cb0 is None else tuple(cb0.shape))
        if key not in self.plans:
            tape = NoiseTape(record=torch.Generator(device=self.device).manual_seed(0))
            model = self.step_module.model
            likelihood = model.likelihood
            if self.member_scale:
                model.likelihood = _MemberGaussian(self.scales[0])
            try:
                with torch.no_grad():
                    values = {k: torch.tensor(v, dtype=self.dtype, device=self.device) for k, v in scalars.items()}
                    self.step_module(xb0, cb0, StepContext(0, 0, values, tape))
                self.plans[key] = tape.shapes
            except TypeError:  # a draw the tape cannot stand in for: a torch.Generator argument got a tape
                self.plans[key] = None
            finally:
                model.likelihood = likelihood
        return self.plans[key]

    def forward_backward(self, members: Sequence[Member], xb: Tensor, cb: Tensor | None,
                         contexts: Sequence[StepContext]) -> list[list[float]]:
        m = self.n_members
        rows = torch.tensor([mem.index for mem in members], device=self.device)  # the running members' rows
        everyone = len(members) == m
        # (M', ...) each: all rows while every member runs, else the running members' rows
        # (indexing is differentiable: their gradients land in their rows of the leaves).
        p = {"model." + name: t if everyone else t[rows] for name, t in zip(self.names, self.stacked, strict=True)}
        buffers = {name: t if everyone else t[rows] for name, t in self.stacked_buffers.items()}
        p.update(buffers)
        scalars = {name: torch.tensor([ctx.scalars[name] for ctx in contexts], dtype=self.dtype, device=self.device)
                   for name in contexts[0].scalars}  # (M',) each
        index = torch.arange(len(members), device=self.device)
        self.draws_from[:] = [cast(torch.Generator, ctx.noise) for ctx in contexts]
        plan = self._noise_plan(xb[0], None if cb is None else cb[0],
                                {k: float(v) for k, v in contexts[0].scalars.items()})
        noise: list[Tensor] | None = None
        if plan is not None:
            # Each member's reparameterisation noise from its own generator, in fit's order.
            noise = []
            for shape, noise_dtype in plan:
                draws = torch.empty((len(members), *shape), dtype=noise_dtype, device=self.device)  # (M', ...)
                for r, generator in enumerate(self.draws_from):
                    torch.randn(shape, generator=generator, out=draws[r])
                noise.append(draws)
        scale = self.scales[rows] if self.member_scale else None
        out = vmap(self._member_step,
                   in_dims=(0, 0, None if cb is None else 0, 0, 0 if self.member_scale else None, 0,
                            None if noise is None else 0),
                   randomness="same")(p, xb, cb, scalars, scale, index, noise)
        if not everyone:  # buffers the step wrote (a family's scalars) went to the copies of the running rows
            with torch.no_grad():
                for name, t in buffers.items():
                    self.stacked_buffers[name][rows] = t
        for t in self.stacked:
            t.grad = None
        out["loss"].sum().backward()  # Σ_i loss_i: member i's rows get ∂loss_i alone
        self.grads = [t.grad for t in self.stacked]  # (M, ...) each; None for a parameter the step does not use
        # Each member's gradient norm (fit's get_total_norm: the 2-norm of the per-tensor 2-norms).
        self.norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.reshape(m, -1), dim=1) for g in self.grads if g is not None]),
            dim=0)  # (M,)
        grad_norms = self.norms if everyone else self.norms[rows]  # (M',)
        values = out["values"]  # (M', 1 + T)
        return torch.cat([values, grad_norms.unsqueeze(1).to(values)], dim=1).tolist()  # one sync

    @torch.no_grad()
    def update(self, members: Sequence[Member]) -> None:
        """fit's gradient clipping and Adam step for these members, on their rows."""
        if not members:
            return
        m = self.n_members
        for mem in members:
            self.last_lr[mem.index] = mem.lr
        stepped = [mem.index for mem in members]
        if any(self.grad_clip[i] is not None for i in stepped):
            # clip_grads_with_norm_: g · min(1, max_norm / (‖g‖ + 1e-6)), computed as torch does
            # (reciprocal, then times max_norm); a member without clipping gets max_norm = inf: factor 1.
            max_norm = torch.tensor([math.inf if clip is None else clip for clip in self.grad_clip],
                                    dtype=self.norms.dtype, device=self.device)  # (M,)
            factor = torch.clamp((self.norms + 1e-6).reciprocal() * max_norm, max=1.0)  # (M,)
            for g in self.grads:
                if g is not None:
                    g.mul_(factor.view(m, *[1] * (g.dim() - 1)))
        # One fused Adam call per (learning rate, β1, β2, ε) over the members' rows (views: updated
        # in place). Not one call on the whole (M, ...) tensors: the fused kernel computes a vector-width
        # body and a scalar tail with different roundings (a 4-wide bias is all tail alone, all
        # body stacked), which moves the last bit; on the rows each member's update is fit's, bit for bit.
        used = [j for j, g in enumerate(self.grads) if g is not None]  # fit's Adam skips parameters without a gradient
        grad_rows = {j: cast(Tensor, self.grads[j]).unbind(0) for j in used}
        by_setting: dict[tuple[float, float, float, float], list[int]] = {}
        for i in stepped:
            by_setting.setdefault((self.last_lr[i], *self.adam_constants[i]), []).append(i)
        for (lr, beta1, beta2, eps), group in by_setting.items():
            adam([self.param_rows[j][i] for i in group for j in used],
                 [grad_rows[j][i] for i in group for j in used],
                 [self.avg_rows[j][i] for i in group for j in used],
                 [self.sq_rows[j][i] for i in group for j in used],
                 [], [self.adam_steps_of[i][j] for i in group for j in used],
                 foreach=None, fused=self.fused or None, amsgrad=False, beta1=beta1, beta2=beta2, lr=lr,
                 weight_decay=0.0, eps=eps, maximize=False)
        self.adam_step += 1

    def discard(self, member: Member) -> None:
        raise InputError("a stacked training cannot skip one member's step (nonfinite = 'skip' is not stacked)")

    @torch.no_grad()
    def sync(self, member: Member) -> None:
        """models[i] gets its rows of the stacked parameters and buffers."""
        i = member.index
        for j, q in enumerate(self.params[i]):
            q.copy_(self.stacked[j][i])
        for j, t in enumerate(self.stacked_buffers.values()):
            self.buffers[i][j].copy_(t[i])

    def optimizer_state(self, member: Member) -> dict[str, Any]:
        """Member i's Adam state_dict, as fit's torch.optim.Adam would hold it: its rows of the
        stacked moments (copies), the shared step count and its last learning rate."""
        i = member.index
        optimizer = self.optimizers[i]
        if self.adam_step > 0:
            for j, q in enumerate(self.params[i]):
                optimizer.state[q] = {
                    "step": torch.tensor(float(self.adam_step), dtype=torch.float32,
                                         device=q.device if self.fused else "cpu"),
                    "exp_avg": self.exp_avgs[j][i].clone(), "exp_avg_sq": self.exp_avg_sqs[j][i].clone()}
        for group in optimizer.param_groups:
            group["lr"] = self.last_lr[i]
        saved = copy.deepcopy(optimizer.state_dict())
        optimizer.state.clear()
        return saved

    def state_extras(self, member: Member) -> dict[str, Any]:
        """Nothing beyond the loop's state: each member's generator drew all its draws."""
        return {}


__all__ = ["PER_MEMBER_TRAIN", "STACK_FLOATS", "StackedExecutor", "can_stack", "check_members", "stack_limit"]
