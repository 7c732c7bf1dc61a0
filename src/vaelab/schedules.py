"""Named scalar schedules: β, the learning rate and any scalar a family declares, per step.

``SCHEDULES`` is the one registry of schedule kinds. A ``ScheduleSpec`` (vaelab.config) names
a kind and its numbers; ``value_at(spec, t, T)`` is a pure function of the 0-based optimizer
step t and the budget T, so a resumed run uses exactly the values an uninterrupted one would:

- constant:     v_t = v.
- warmup:       v_t = v · min(1, t / N), N = ``steps``.
- cyclical:     Fu et al. (2019), below.
- cosine:       v_t = e + (v − e) · ½ (1 + cos(π · min(1, t / N))), N = ``steps`` or T: v at t = 0,
                e at t = N (the learning rate's cosine decay to e = 0).
- exponential:  v_t = v · (e / v)^min(1, t / N): a geometric anneal from v to e over N steps
                (Jang et al. 2017 anneal the Gumbel-softmax temperature this way).
- burda:        Burda et al. (2016)'s learning rate, as their code sets it (yburda/iwae,
                experiments.py): stage i = 0..7 lasts 3^i · N steps (N = ``steps``: one epoch
                for the learning rate) at v_t = v · round(10^(1 − i/7), 1) / 10, i.e. v, 0.72 v,
                0.52 v, 0.37 v, 0.27 v, 0.19 v, 0.14 v, 0.1 v; 3,280 · N steps in all, then 0.1 v.

The training loop (vaelab.train) reads β from ``beta_spec(train config)``, the learning rate
from ``lr_spec`` and a family's own scalars from the specs its model declares
(``LatentModel.step_scalars``).

The β of the ELBO's KL term at each optimizer step:

``beta_at`` is a pure function of the 0-based optimizer step t (with the budget T and the
number of steps per epoch), so a resumed run uses exactly the β an uninterrupted one would.
With β the configured ``train.beta``:

- constant:  β_t = β.
- warmup:    β_t = β · min(1, t / N), N the warm-up length in steps (``warmup_steps``, or
  ``warmup_epochs`` × steps per epoch). Step 0 trains with β_0 = 0, step t with β·t/N, and
  from step N on β_t = β.
- cyclical:  Fu et al. (2019), "Cyclical Annealing Schedule" (NAACL), §3: the budget T is cut into
  M = ``cycles`` cycles of L = ⌈T / M⌉ steps (the last one shorter when M does not divide T);
  within a cycle τ_t = (t mod L) / L ∈ [0, 1) and β_t = β · min(1, τ_t / R), R = ``cycle_ratio``.
  Every cycle starts at β = 0, rises linearly over its first R·L steps and stays at β for the
  rest (with R = 1 it rises over the whole cycle and ends at β·(L−1)/L). Fu et al. write
  τ = mod(t−1, ⌈T/M⌉) / (T/M) with 1-based t; dividing by L = ⌈T/M⌉ instead keeps τ < 1, so
  every cycle, the last included, starts again at β = 0.

The schedule depends on the budget T (cyclical) and on the steps per epoch (warm-up in epochs):
a resumed run given a larger budget re-spaces its cycles, like the cosine learning rate does.
See docs/objectives.md for what β does to each term.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from vaelab.config import ConfigError, ScheduleSpec, TrainConfig, lookup


def total_steps(config: TrainConfig, n: int) -> int:
    """The step budget T: ``steps`` if set, else epochs × ⌈n / batch_size⌉."""
    return config.steps if config.steps is not None else config.epochs * math.ceil(n / config.batch_size)


def _length(spec: ScheduleSpec, budget: int) -> int:
    return spec.steps if spec.steps is not None else budget


def _constant(spec: ScheduleSpec, step: int, budget: int) -> float:
    return spec.value


def _warmup(spec: ScheduleSpec, step: int, budget: int) -> float:
    if spec.steps is None:
        raise ConfigError("a warmup schedule needs its length in steps (steps = N)")
    return spec.value * min(1.0, step / spec.steps)


def _cyclical(spec: ScheduleSpec, step: int, budget: int) -> float:
    length = math.ceil(budget / spec.cycles)  # L = ⌈T / M⌉
    tau = (step % length) / length  # Fu et al. (2019) §3's τ, with 0-based t and ⌈T/M⌉ below
    return spec.value * min(1.0, tau / spec.ratio)


def _cosine(spec: ScheduleSpec, step: int, budget: int) -> float:
    length = _length(spec, budget)
    # π·t/N in this order: the learning rate's float is the one fit has always used
    return spec.end + (spec.value - spec.end) * 0.5 * (1.0 + math.cos(math.pi * min(step, length) / length))


def _exponential(spec: ScheduleSpec, step: int, budget: int) -> float:
    if spec.value <= 0 or spec.end <= 0:
        raise ConfigError(f"an exponential schedule runs between positive values; got {spec.value:g} -> {spec.end:g}")
    return spec.value * (spec.end / spec.value) ** min(1.0, step / _length(spec, budget))


BURDA_STAGES = 8  # stage i = 0..7 lasts 3^i epochs: 3,280 epochs in all


def burda_stage(step: int, unit: int) -> int:
    """The stage i of step t in Burda et al.'s schedule: the i with (3^i − 1)/2 ≤ t // unit < (3^(i+1) − 1)/2
    (the epochs before stage i are 1 + 3 + ... + 3^(i−1)), at most 7."""
    epoch, stage, start = step // unit, 0, 0
    while stage < BURDA_STAGES - 1 and epoch >= start + 3 ** stage:
        start += 3 ** stage
        stage += 1
    return stage


def _burda(spec: ScheduleSpec, step: int, budget: int) -> float:
    if spec.steps is None:
        raise ConfigError("a burda schedule needs the length of one epoch in steps (steps = N)")
    # round(·, 1) as their code does: 1e-4 · round(10^(1 − i/7), 1) for a learning rate of 1e-3
    return spec.value * round(10.0 ** (1.0 - burda_stage(step, spec.steps) / 7.0), 1) / 10.0


# kind -> v(spec, t, T). The one list of schedule kinds: config checks and help read it.
SCHEDULES: dict[str, Callable[[ScheduleSpec, int, int], float]] = {
    "constant": _constant, "warmup": _warmup, "cyclical": _cyclical, "cosine": _cosine, "exponential": _exponential,
    "burda": _burda,
}


def value_at(spec: ScheduleSpec, step: int, budget: int) -> float:
    """The scheduled scalar at the 0-based optimizer step ``step`` of a budget of ``budget`` steps."""
    return lookup(SCHEDULES, spec.kind, "schedule.kind", "schedule")(spec, step, budget)


def mean_over(spec: ScheduleSpec, first: int, stop: int, budget: int) -> float:
    """The mean of the scalar over the steps first..stop-1 (the history's per-epoch β)."""
    return sum(value_at(spec, t, budget) for t in range(first, stop)) / max(1, stop - first)


def warmup_length(config: TrainConfig, steps_per_epoch: int) -> int:
    """N, the warm-up length in optimizer steps (``warmup_steps`` or ``warmup_epochs`` × steps per epoch)."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    if config.warmup_epochs is None:
        raise ConfigError("beta_schedule = 'warmup' needs --warmup-epochs or --warmup-steps")
    return config.warmup_epochs * steps_per_epoch


def cycle_length(config: TrainConfig, budget: int) -> int:
    """L = ⌈T / M⌉, the steps of one annealing cycle (T the step budget, M = ``cycles``)."""
    return math.ceil(budget / config.cycles)


# The specs below restate a TrainConfig's settings, which its own validation already checked
# (model_construct: no second check, so a config built to test the non-finite policy keeps its β;
# the fields not given take ScheduleSpec's defaults).
def beta_spec(config: TrainConfig, steps_per_epoch: int) -> ScheduleSpec:
    """β as a schedule: ``train.beta`` with ``beta_schedule`` and its settings."""
    if config.beta_schedule == "warmup":
        return ScheduleSpec.model_construct(kind="warmup", value=config.beta,
                                            steps=warmup_length(config, steps_per_epoch))
    if config.beta_schedule == "cyclical":
        return ScheduleSpec.model_construct(kind="cyclical", value=config.beta, cycles=config.cycles,
                                            ratio=config.cycle_ratio)
    return ScheduleSpec.model_construct(kind="constant", value=config.beta)


def lr_spec(config: TrainConfig, steps_per_epoch: int) -> ScheduleSpec:
    """Adam's step size as a schedule: constant, cosine decay to 0 over the budget, or Burda et
    al.'s stages of 3^i epochs (``steps_per_epoch`` steps each)."""
    if config.lr_schedule == "burda":
        return ScheduleSpec.model_construct(kind="burda", value=config.lr, steps=steps_per_epoch)
    return ScheduleSpec.model_construct(kind=config.lr_schedule, value=config.lr, end=0.0)


def check_schedule(config: TrainConfig, steps_per_epoch: int, budget: int) -> None:
    """Refuse a schedule that cannot do what it says within the budget of ``budget`` steps.

    A warm-up at least as long as the budget never reaches β (the last step has β·(T−1)/N);
    cycles of one step keep β = 0 throughout. Raises ConfigError naming the setting.
    """
    if config.beta_schedule == "warmup":
        n = warmup_length(config, steps_per_epoch)
        if n >= budget:
            given = (f"--warmup-steps {config.warmup_steps}" if config.warmup_steps is not None
                     else f"--warmup-epochs {config.warmup_epochs} ({n} steps)")
            raise ConfigError(f"{given} is not shorter than the budget of {budget} steps, so β would never reach "
                              f"{config.beta:g}; give a shorter warm-up or a larger budget")
    elif config.beta_schedule == "cyclical" and cycle_length(config, budget) < 2:
        raise ConfigError(f"--cycles {config.cycles} over a budget of {budget} steps leaves cycles of one step, "
                          f"in which β stays 0; use at most {budget // 2} cycles or a larger budget")


def beta_at(step: int, config: TrainConfig, steps_per_epoch: int, budget: int) -> float:
    """β of the KL term at the 0-based optimizer step ``step`` (see the module docstring).

    Args:
        step: t, counted from 0 over the whole run (resumed runs included).
        config: the run's TrainConfig (``beta``, ``beta_schedule`` and its settings).
        steps_per_epoch: ⌈n / batch_size⌉, which turns ``warmup_epochs`` into steps.
        budget: T, the run's total number of optimizer steps (cycle lengths).
    """
    return value_at(beta_spec(config, steps_per_epoch), step, budget)


def describe(config: TrainConfig) -> str:
    """The KL weighting in words, for the report and the console: "β = 4", "β warm-up to 1 over
    10 epochs", "β cyclical to 1 (4 cycles, ratio 0.5)", with ", free bits λ = 0.5 nats per dimension"."""
    if config.beta_schedule == "warmup":
        length = (f"{config.warmup_steps} steps" if config.warmup_steps is not None
                  else f"{config.warmup_epochs} epochs")
        text = f"β warm-up to {config.beta:g} over {length}"
    elif config.beta_schedule == "cyclical":
        text = f"β cyclical to {config.beta:g} ({config.cycles} cycles, ratio {config.cycle_ratio:g})"
    else:
        text = f"β = {config.beta:g}"
    if config.free_bits > 0:
        per = {"dim": "dimension", "layer": "layer"}.get(config.free_bits_group, "latent")
        text += f", free bits λ = {config.free_bits:g} nats per {per}"
    return text
