"""Training: one readable loop (``fit``) and the run-directory driver around it (``train_run``).

``fit`` keeps the whole training set as one tensor on the model's device and shuffles it by
index every epoch, so the hot loop does no per-item Python work. All randomness (shuffling,
the reparameterisation noise) comes from one ``torch.Generator`` whose state is saved with
each checkpoint: a resumed run continues exactly where it left off.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

from vaelab import checkpoint as ckpt
from vaelab.checkpoint import TrainState
from vaelab.conditions import Condition, fit_condition
from vaelab.config import ConfigError, RunConfig, TrainConfig, flag_name
from vaelab.data.pixels import binarize, fixed_binarization, resolve_binarize
from vaelab.data.registry import load_dataset
from vaelab.distributions import NoiseTape
from vaelab.errors import InputError, VaelabError
from vaelab.history import History
from vaelab.models import LatentModel, build_model
from vaelab.objectives import ObjectiveOutput, get_objective, objective_for
from vaelab.schedules import beta_at, check_schedule
from vaelab.settings import check_settings
from vaelab.sizes import check_model_fits

log = logging.getLogger(__name__)


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


class TrainingInterrupted(VaelabError):
    """``should_stop`` asked fit() to stop. A checkpoint of the current step (``state``, mid-epoch
    included) was handed to ``on_checkpoint``; fit() with that state resumes exactly."""

    def __init__(self, step: int, epoch: int, state: TrainState, history: History) -> None:
        super().__init__(f"training interrupted at step {step} (epoch {epoch}); a checkpoint of this step was saved")
        self.step, self.epoch, self.state, self.history = step, epoch, state, history


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


def objective_name(model: LatentModel, config: TrainConfig) -> str:
    """The objective a model trains with: ``config.objective`` where the family supports it,
    else the family's ``default_objective`` (an autoencoder always uses reconstruction; the
    config's setting rules refuse an objective the user gave that the family cannot use)."""
    return objective_for(type(model), config.objective)


def objective(model: LatentModel, x: Tensor, c: Tensor | None, config: TrainConfig,
              generator: torch.Generator, beta: float | None = None) -> ObjectiveOutput:
    """The training objective the config asks for, from ``vaelab.objectives.OBJECTIVES``.

    ``beta``: the KL weight of this step (``vaelab.schedules.beta_at``); None: ``config.beta``.
    """
    return step_objective(model, config, generator)(x, c, config.beta if beta is None else beta)


def step_objective(model: LatentModel, config: TrainConfig,
                   generator: torch.Generator) -> Callable[[Tensor, Tensor | None, float], ObjectiveOutput]:
    """``(x, c, beta) -> ObjectiveOutput``: the training objective with the name lookup, the
    free-bits check and the settings resolved once, not on every step (a 2-D step is ~40 small
    kernels, so per-step Python shows in the time: benchmarks/bench_fit_overhead.py)."""
    name = objective_name(model, config)
    obj = get_objective(name)
    if config.free_bits > 0 and not obj.uses_free_bits:
        raise ConfigError(f"free bits floor the ELBO's KL term, which the {name} objective does not have; "
                          "use objective = 'elbo' (--objective elbo) or free_bits = 0")
    k, free_bits, group = config.k, config.free_bits, config.free_bits_group

    def run(x: Tensor, c: Tensor | None, beta: float | Tensor, noise: NoiseTape | None = None) -> ObjectiveOutput:
        draws = cast("torch.Generator", noise) if noise is not None else generator  # a tape stands in for it
        # β may be a 0-d tensor (the compiled step): it only multiplies tensors
        return obj(model, x, c, beta=cast("float", beta), k=k, generator=draws, free_bits=free_bits,
                   free_bits_group=group)

    return run


class CompileError(VaelabError):
    """``train.compile``: torch.compile could not compile the training step."""


def compiled_objective(run: Callable[..., ObjectiveOutput],
                       generator: torch.Generator) -> Callable[[Tensor, Tensor | None, float], ObjectiveOutput]:
    """``run`` (from ``step_objective``) compiled with ``torch.compile`` (inductor), forward and backward.

    torch.compile cannot trace a ``torch.Generator``, so the first batch of each shape runs
    eagerly and records the shapes of its N(0, I) draws (``distributions.NoiseTape``); later
    batches draw those from ``generator`` outside the compiled graph, in the same order, and
    pass them in. The draws, and so the generator state a checkpoint saves, are the eager
    path's; the weights differ from eager only by float rounding (tests/test_train_speed.py).
    β goes in as a tensor, so a β schedule does not recompile the step.
    """
    plans: dict[tuple[tuple[int, ...], tuple[int, ...] | None], tuple[list[tuple[tuple[int, ...], torch.dtype]],
                                                                     list[str]]] = {}

    def traced(x: Tensor, c: Tensor | None, beta: Tensor, noise: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        out = run(x, c, beta, NoiseTape(noise))
        return out.loss, list(out.terms.values())

    compiled = torch.compile(traced, fullgraph=True, dynamic=False)

    def step(x: Tensor, c: Tensor | None, beta: float) -> ObjectiveOutput:
        key = (tuple(x.shape), None if c is None else tuple(c.shape))
        plan = plans.get(key)
        if plan is None:  # the first batch of this shape: eager, noting the draws it makes
            tape = NoiseTape(record=generator)
            out = run(x, c, beta, tape)
            plans[key] = (tape.shapes, list(out.terms))
            return out
        shapes, names = plan
        noise = [torch.randn(shape, generator=generator, device=x.device, dtype=dtype) for shape, dtype in shapes]
        try:
            loss, terms = compiled(x, c, torch.tensor(beta, dtype=x.dtype, device=x.device), noise)
        except Exception as err:  # torch's compiler errors share no base class; none is swallowed
            raise CompileError(f"train.compile: torch.compile could not compile the training step "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                               "train without it (train.compile = false, drop --compile)") from err
        return ObjectiveOutput(loss=loss, terms=dict(zip(names, terms, strict=True)))

    return step


@torch.no_grad()
def diversity(model: LatentModel, n: int, generator: torch.Generator, c: Tensor | None = None) -> float:
    """Var(E[x|z]) of n decoded prior samples (decoder means), summed over data dimensions.

    Near 0 means every z decodes to the same x (posterior collapse). A model that fits the data
    approaches Var(x) − E_z tr Cov(x|z), not Var(x): its observation noise carries the rest.
    """
    return float(model.sample(n, c, generator=generator).var(dim=0).sum())


def total_steps(config: TrainConfig, n: int) -> int:
    """The step budget: ``steps`` if set, else epochs × ceil(n / batch_size)."""
    return config.steps if config.steps is not None else config.epochs * math.ceil(n / config.batch_size)


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
    rescales the gradient to at most that norm before each step.
    """
    _check_training_data(model, x, c)
    if not dynamic_binarization:  # dynamic draws are {0, 1} by construction
        # Once per data set, not per step: a Bernoulli likelihood trained on grey levels would
        # minimise a cross-entropy and report it as a likelihood.
        model.likelihood.check_support(x, "the training data")
    n = x.shape[0]
    device = x.device
    history = history if history is not None else History()
    state = state if state is not None else TrainState()
    # The fused kernel updates every parameter in one pass instead of ~10 elementwise ops per
    # tensor: on CPU it makes a 784-400-20 MNIST epoch ~25 % faster (benchmarks/bench_mnist_speed.py).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused or None)
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device=device).manual_seed(config.seed)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    if state.rng is not None:
        generator.set_state(state.rng)
    budget = total_steps(config, n)
    elapsed = history.last["seconds"] if history.last else 0.0
    bs = config.batch_size
    n_batches = math.ceil(n / bs)
    skip_limit = config.skip_limit if config.nonfinite == "skip" else 0
    check_schedule(config, n_batches, budget)

    def beta_mean(first: int, stop: int) -> float:
        """The history's β: the mean of beta_at over the steps first..stop-1 of an epoch."""
        return sum(beta_at(t, config, n_batches, budget) for t in range(first, stop)) / max(1, stop - first)

    def learning_rate(step: int) -> float:
        """Adam's step size at optimizer step ``step`` (0-based): constant, or cosine decay to 0,
        halved once for every step skipped so far."""
        lr = config.lr
        if config.lr_schedule == "cosine":
            lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / budget))
        return lr * 0.5 ** state.skips

    def snapshot(complete: bool) -> TrainState:
        return TrainState(step=state.step, epoch=state.epoch, optimizer=optimizer.state_dict(),
                          rng=generator.get_state(), complete=complete, skips=state.skips)

    # One device and dtype (the usual case): the gradient norm skips get_total_norm's grouping.
    total_norm = _total_norm if len({(p.device, p.dtype) for p in params}) == 1 else torch.nn.utils.get_total_norm
    names = ["recon", "kl"]  # the objective's term names; every step's output sets them
    run_objective = step_objective(model, config, generator)
    if config.compile:
        run_objective = compiled_objective(run_objective, generator)
    model.train()
    while state.step < budget:
        start = time.perf_counter()
        first_batch, seen, skipped, grad_norm_max, lr = 0, 0, 0, 0.0, learning_rate(state.step)
        # Σ loss and each named term, weighted by batch size, in float64 on the host (the values
        # are read every step anyway); sized by the first step's terms.
        sums: list[float] = []
        if state.epoch_rng is not None:  # resuming in the middle of an epoch
            epoch_rng, rng = state.epoch_rng, generator.get_state()
            generator.set_state(epoch_rng)
        else:
            epoch_rng = generator.get_state()
        # Dynamic binarization: a fresh x_bin ~ Bernoulli(x) every epoch, from the training
        # generator, so a resumed run draws the same bits (see vaelab.data.pixels).
        x_epoch = binarize(x, generator) if dynamic_binarization else x
        perm = torch.randperm(n, generator=generator, device=device)
        if state.epoch_rng is not None:
            # The epoch's shuffle and bits are regenerated above; continue with the generator
            # state and the partial sums of the step where the run stopped.
            generator.set_state(rng)
            first_batch, seen, skipped = state.batch, state.epoch_seen, state.epoch_skipped
            grad_norm_max = state.grad_norm_max
            if state.epoch_sums is not None:
                sums = state.epoch_sums.double().tolist()
            start -= state.epoch_seconds
            state.epoch_rng = None
        epoch_first_step = state.step - first_batch  # every batch of an epoch is one step, skipped or not
        for b in range(first_batch, n_batches):
            if state.step >= budget:
                break
            if should_stop is not None and should_stop():
                mid = snapshot(False)
                mid.epoch_rng, mid.batch, mid.epoch_sums = epoch_rng, b, torch.tensor(sums, dtype=torch.float64)
                mid.epoch_seen, mid.epoch_skipped = seen, skipped
                mid.epoch_seconds, mid.grad_norm_max = time.perf_counter() - start, grad_norm_max
                model.eval()
                if on_checkpoint is not None:
                    on_checkpoint(model, history, mid)
                raise TrainingInterrupted(state.step, state.epoch + 1, mid, history)
            idx = perm[b * bs:(b + 1) * bs]
            # index_select copies whole rows: the same values as x[idx], ~2x faster for 784-pixel rows
            xb, cb = x_epoch.index_select(0, idx), (None if c is None else c.index_select(0, idx))
            out = run_objective(xb, cb, beta_at(state.step, config, n_batches, budget))
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = total_norm([p.grad for p in params if p.grad is not None])
            names = list(out.terms)
            with torch.no_grad():  # one kernel and one host read for the loss, every term and the norm
                values = torch.stack([out.loss, *out.terms.values(), grad_norm.to(out.loss.dtype)]).tolist()
            loss, *term_values, norm = values
            terms = dict(zip(names, term_values, strict=True))
            step_sums = [v * len(idx) for v in values[:-1]]  # float64, as the history's means
            recon, kl = terms.get("recon", math.nan), terms.get("kl", math.nan)
            state.step += 1
            lr = learning_rate(state.step - 1)
            if not all(math.isfinite(v) for v in (loss, *term_values, norm)):
                term = _nonfinite_term(loss, terms, norm)
                if state.skips >= skip_limit:
                    # Record the failing epoch so the report can show it; the last checkpoint stays.
                    history.append(_row(state.epoch + 1, state.step, names, step_sums, len(idx),
                                        math.nan, elapsed + time.perf_counter() - start, lr, skipped, norm,
                                        beta_mean(epoch_first_step, state.step)))
                    model.eval()
                    raise TrainingDiverged(state.step, state.epoch + 1, history, term=term,
                                           advice=_divergence_advice(term, model, config), skips=state.skips)
                # Skip: no update (Adam's moments stay as they were), and a smaller step from now on.
                optimizer.zero_grad(set_to_none=True)
                state.skips += 1
                skipped += 1
                if on_step is not None:
                    on_step(StepInfo(state.step, budget, state.epoch + 1, loss, recon, kl, lr, True, norm, terms))
                continue
            if config.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(params, config.grad_clip, grad_norm)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            sums = step_sums if not sums else [a + b for a, b in zip(sums, step_sums, strict=True)]
            seen += len(idx)
            grad_norm_max = max(grad_norm_max, norm)
            if on_step is not None:
                on_step(StepInfo(state.step, budget, state.epoch + 1, loss, recon, kl, lr, False, norm, terms))
        state.epoch += 1
        model.eval()
        div_gen = torch.Generator(device=device).manual_seed((config.seed * 1_000_003 + state.epoch) % 2**64)
        div = diversity(model, config.diversity_samples, div_gen,
                        None if c is None else c[torch.randint(n, (config.diversity_samples,), generator=div_gen,
                                                                device=device)])
        model.train()
        elapsed += time.perf_counter() - start
        history.append(_row(state.epoch, state.step, names, sums, seen, div, elapsed, lr, skipped, grad_norm_max,
                            beta_mean(epoch_first_step, state.step)))
        done = state.step >= budget
        if on_checkpoint is not None and (done or state.epoch % config.checkpoint_every == 0):
            model.eval()
            on_checkpoint(model, history, snapshot(done))
            model.train()
    model.eval()
    return history


def _total_norm(grads: list[Tensor]) -> Tensor:
    """‖g‖₂ over all gradients (tensors of one device and dtype): the norm of their per-tensor norms.

    The same calls as ``torch.nn.utils.get_total_norm`` (``_foreach_norm``, then the norm of
    the stacked norms), so the same float, without its grouping of the tensors by device and
    dtype, which costs as much as the norms themselves at 2-D sizes.
    """
    if not grads or grads[0].device.type not in ("cpu", "cuda") or grads[0].is_sparse:
        return torch.nn.utils.get_total_norm(grads)
    with torch.no_grad():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


def _check_training_data(model: LatentModel, x: Tensor, c: Tensor | None) -> None:
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


def _divergence_advice(term: str, model: LatentModel, config: TrainConfig) -> str:
    """What to change when training stops on a non-finite value. A setting that is itself
    infinite is named first: no learning rate fixes β = inf or σ² = inf."""
    mcfg = model.config
    uses_beta = objective_name(model, config) == "elbo"
    gaussian_fixed = mcfg.likelihood == "gaussian"
    if not math.isfinite(config.lr):
        return f"train.lr (--lr) is {config.lr}: use a finite learning rate such as 1e-3."
    if uses_beta and not math.isfinite(config.beta) and term in ("KL", "loss", "reconstruction and KL"):
        return (f"train.beta (--beta) is {config.beta}: the KL term β·KL is then infinite (NaN where KL = 0); "
                "use a finite β such as 4.")
    if term == "loss":  # finite terms, non-finite total: β·KL overflowed, or the IWAE bound did
        return ("The terms were finite, the objective built from them was not: "
                + ("use a smaller --beta." if uses_beta else "try a smaller learning rate (--lr) or a smaller --k."))
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


def _row(epoch: int, step: int, names: list[str], sums: list[float], seen: int, div: float, seconds: float, lr: float,
         skipped: int, grad_norm: float, beta: float) -> dict[str, float]:
    """One history row: the batch-size-weighted means of the loss and of every named term."""
    # An epoch whose every step was skipped has no loss to report: NaN, not 0.
    loss, *means = [v / seen for v in sums] if seen else (math.nan,) * (1 + len(names))
    return {"epoch": epoch, "step": step, "loss": loss, **dict(zip(names, means, strict=True)), "diversity": div,
            "seconds": seconds, "lr": lr, "skipped": skipped, "grad_norm": grad_norm, "beta": beta}


# What may change when a run is resumed: the budget, the step size, how often it is
# saved, and how it is evaluated. Everything else defines the model or its data.
RESUMABLE = frozenset({"train.epochs", "train.steps", "train.lr", "train.checkpoint_every", "train.compile",
                       "eval.k", "eval.batch_size", "eval.seed"})


def resolve_paths(config: RunConfig) -> RunConfig:
    """``config`` with relative data paths made absolute, so the run can be evaluated from
    another working directory (the user's explicit settings are kept as such)."""
    update = {}
    for key in ("path", "data_dir"):
        value = getattr(config.data, key)
        if value is not None and not Path(value).expanduser().is_absolute():
            update[key] = str(Path(value).expanduser().resolve())
    if not update:
        return config
    data = config.data.model_copy(update=update)
    data.__pydantic_fields_set__ = set(config.data.model_fields_set)
    return config.model_copy(update={"data": data})


def resume_config(saved: RunConfig, given: RunConfig, n_train: int) -> RunConfig:
    """The config a resumed run continues with: the saved one, with the settings the user
    gave in ``given`` (its ``model_fields_set``) that may change (``RESUMABLE``).

    Without a new budget the run keeps its own. Raises ConfigError for a setting that cannot
    change (naming it) or a budget smaller than the saved one.
    """
    refused = []
    train_update: dict[str, object] = {}
    eval_update: dict[str, object] = {}
    given = resolve_paths(given)
    for dotted in given.user_settings():
        section, field = dotted.split(".", 1)
        value = getattr(getattr(given, section), field)
        if dotted in RESUMABLE:
            (train_update if section == "train" else eval_update)[field] = value
        elif value != getattr(getattr(saved, section), field):
            refused.append(f"  {flag_name(dotted)}: the run has {getattr(getattr(saved, section), field)!r}")
    if refused:
        raise ConfigError(
            "a resumed run keeps its data and model; these settings cannot change:\n" + "\n".join(refused)
            + "\n(drop them; --epochs / --steps, --lr, --checkpoint-every and --eval-k may change; "
            "start a new run with another --out for the rest)"
        )
    if "epochs" in train_update and "steps" not in train_update:
        train_update["steps"] = None  # an epoch budget replaces a saved step budget
    train = saved.train.model_copy(update=train_update)
    old_budget, new_budget = total_steps(saved.train, n_train), total_steps(train, n_train)
    if new_budget < old_budget:
        raise ConfigError(
            f"the run's budget is {old_budget} steps ({_budget_words(saved.train)}); the given "
            f"{_budget_words(train)} is {new_budget} steps. A resumed run is continued, never "
            "shortened: drop --epochs / --steps to keep its budget, or give a larger one"
        )
    return saved.model_copy(update={
        "train": train, "eval": saved.eval.model_copy(update=eval_update),
    })


def _check_writable(run_dir: Path) -> None:
    """Fail before training, not at the first checkpoint after the whole budget (audit T78d)."""
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise ckpt.RunDirError(
            f"{run_dir}: cannot write in the run directory ({err.strerror or err}); a resumed run could not "
            "save its checkpoints. Make the folder writable, or copy the run to a writable place and resume there"
        ) from None


def _budget_words(train: TrainConfig) -> str:
    return f"--steps {train.steps}" if train.steps is not None else f"--epochs {train.epochs}"


def train_run(
    config: RunConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ckpt.Run:
    """Train the configured model and write the run directory; returns the loaded Run.

    Every setting given in ``config`` must apply (``check_settings``); relative data paths
    are stored absolute. With ``resume`` the run in ``run_dir`` is continued from its last
    checkpoint with its saved config and budget; the settings given in ``config`` that may
    change (a larger budget, ``lr``, ``checkpoint_every``, evaluation) replace the saved ones
    and are recorded in config.json; any other given setting that differs is refused.
    Nothing is allocated or written before the sizes are checked against memory.

    The run directory is locked for the whole training (a second training into it is
    refused). With ``overwrite`` the data is loaded and the model built before anything of
    the replaced run is removed, so a bad setting leaves the old run intact; only a folder
    vaelab made is replaced.
    ``should_stop`` (see fit) saves a checkpoint of the current step and raises
    TrainingInterrupted; ``resume`` continues it exactly.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"train_run needs a vaelab.RunConfig, got {type(config).__name__}; build one with "
                          "RunConfig.from_dict(...) or RunConfig.from_toml(path)")
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; give only one")
    history: History | None = None
    state: TrainState | None = None
    condition: Condition | None = None
    lock: ckpt.RunLock | None = None
    try:
        if resume:
            if not run_dir.is_dir():
                ckpt.load(run_dir, device)  # raises the error that explains what a run directory is
            lock = ckpt.RunLock(run_dir).acquire()
            ckpt.recover(run_dir)  # finish (or drop) a checkpoint a crash interrupted
            saved = ckpt.load(run_dir, device)
            model = saved.model
            condition = saved.condition
            state = ckpt.load_state(run_dir)
            data = load_dataset(saved.config.data, "train", expect_dim=model.x_dim)
            config = resume_config(saved.config, config, len(data))
            history = History([r for r in saved.history.rows if r["epoch"] <= state.epoch])
        else:
            check_settings(config)
            config = resolve_paths(config)
            ckpt.check_run_dir(run_dir, overwrite=overwrite)  # before any work: nothing is removed yet
            data = load_dataset(config.data, "train")
        pixels = resolve_binarize(config, data)
        if not resume and config.data.condition is not None:
            # The condition spec (label list / training range) comes from the training split
            # only; a resumed run keeps the one it saved.
            condition = fit_condition(config.data.condition, data, config.model.cond_embed)
        # A schedule the budget cannot hold is refused before the run directory is taken.
        n_train = len(data)
        check_schedule(config.train, math.ceil(n_train / config.train.batch_size), total_steps(config.train, n_train))
        cond_width = 0 if condition is None else condition.width
        cond_embed = () if condition is None else condition.embed_widths
        check_model_fits(config.model, config.train, data.dim, cond_width, cond_embed)
        x = data.x.to(device)
        if pixels == "fixed":
            x = fixed_binarization(x, "train", config.data.seed)
        c = None if condition is None else condition.tensor(data).to(device)  # (N, cond_dim)
        if resume:
            _check_writable(run_dir)
            (run_dir / ckpt.FAILURE_FILE).unlink(missing_ok=True)
        else:
            model = build_model(config.model, data.dim, cond_width, seed=config.train.seed,
                                cond_embed=cond_embed).to(device)
            # Only now, with the data read and the model built, is the folder taken (and a
            # replaced run cleared); the untrained model is the first checkpoint, so there is
            # always a last good one.
            lock = ckpt.claim(run_dir, overwrite=overwrite)
            ckpt.write_checkpoint(run_dir, model, config, history=History(), state=TrainState(), condition=condition)

        def on_checkpoint(m: LatentModel, h: History, s: TrainState) -> None:
            ckpt.write_checkpoint(run_dir, m, config, history=h, state=s, condition=condition)

        try:
            fit(model, x, config.train, c=c, state=state, history=history, on_step=on_step,
                on_checkpoint=on_checkpoint, dynamic_binarization=pixels == "dynamic", should_stop=should_stop)
        except TrainingDiverged as err:
            ckpt.write_history(run_dir, err.history)
            ckpt.write_json(run_dir / ckpt.FAILURE_FILE,
                            {"step": err.step, "epoch": err.epoch, "term": err.term, "message": str(err)})
            raise
        run = ckpt.load(run_dir, device)
        ckpt.discard_stale_metrics(run)  # e.g. from an eval while this run trained
        return run
    finally:
        if lock is not None:
            lock.release()
