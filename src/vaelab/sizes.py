"""Memory a model would need, checked before anything is allocated.

A typo such as ``--latent-dim 1000000000`` or ``--k 100000000`` otherwise ends in an
allocator traceback, or in minutes of swapping before one. These checks estimate the bytes
from the sizes alone (a model is built on PyTorch's ``meta`` device, which allocates
nothing) and refuse what exceeds the machine's physical memory (:mod:`vaelab.memory`),
saying how much it would take.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vaelab.config import ModelConfig, TrainConfig
from vaelab.memory import FLOAT_BYTES, SizeError, check_fits
from vaelab.models import LatentModel, build_model
from vaelab.objectives import get_objective, objective_name


def _meta_model(
    config: ModelConfig, x_dim: int, cond_dim: int, cond_embed: Sequence[int]
) -> LatentModel:
    """The model on the meta device: its shapes without any memory behind them."""
    with torch.device("meta"):
        return build_model(config, x_dim, cond_dim, cond_embed=cond_embed)


def _activation_width(model: nn.Module) -> int:
    """Σ of the output widths of the model's linear layers: the floats one forward pass keeps per row."""
    return sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def check_model_fits(
    config: ModelConfig, train: TrainConfig | None, x_dim: int, cond_dim: int = 0,
    cond_embed: Sequence[int] = (),
) -> None:
    """Refuse a model whose weights (+ gradients and Adam's two moments) or whose training
    step (batch × samples × activations, kept for the backward pass) cannot fit in memory."""
    model = _meta_model(config, x_dim, cond_dim, cond_embed)
    n_params = sum(p.numel() for p in model.parameters())
    factor = 1 if train is None else 4  # weights; + gradient, Adam's m and v when training
    widths = (f"--channels {','.join(map(str, config.channels))}" if config.net != "mlp"
              else f"--hidden {','.join(map(str, config.hidden))}")
    check_fits(n_params * FLOAT_BYTES * factor,
               f"a model with {n_params:,} weights (--latent-dim {config.latent_dim}, {widths})",
               f"use a smaller --latent-dim or {widths.split()[0]}")
    if train is None:
        return
    # The diversity column decodes diversity_samples prior draws at once after every epoch.
    # Named by what the user set (the widths, the image size), not by the internal setting alone
    # (audit IF15, TR68: "use fewer diversity_samples", a setting with no flag).
    check_fits(float(train.diversity_samples) * (_activation_width(model) + x_dim) * FLOAT_BYTES,
               f"the diversity check after each epoch, which decodes {train.diversity_samples} prior samples of "
               f"{x_dim:,} values each at once ({widths})",
               f"use a smaller {widths.split()[0]} or smaller images (--image-size), or fewer samples "
               "(diversity_samples in the [train] table of a --config file)")
    # An objective that draws k samples per point decodes batch × k rows in each step.
    samples = train.k if get_objective(objective_name(model, train)).uses_k else 1
    rows = train.batch_size * samples
    # x2: the forward activations and their gradients.
    check_fits(2.0 * rows * (_activation_width(model) + x_dim) * FLOAT_BYTES,
               f"a training step of --batch-size {train.batch_size} × --k {samples} samples",
               "use a smaller --k or --batch-size")


def check_decode_fits(model: nn.Module, n: int, what: str) -> None:
    """Refuse decoding n latent draws at once when their activations cannot fit."""
    width = _activation_width(model) + int(getattr(model, "x_dim", 0))
    check_fits(float(n) * width * FLOAT_BYTES, what, "ask for fewer")


# A budget beyond this many optimizer steps would train for months even at 0.1 ms a step;
# such a number is a typo (an extra zero, an exponent), refused before anything is written.
MAX_TRAIN_STEPS = 10**10
# Decoder passes (test points × importance samples) an evaluation may make; beyond them it
# would run for hours to days without a word (audit EV02: k = 10^7 on 200 points).
MAX_EVAL_PASSES = 10**9
_FLOPS_PER_SECOND = 1e10  # a fast CPU's rate, for the time estimates in messages


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400.0), ("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} seconds"


def check_budget(steps: int, words: str) -> None:
    """Refuse a training budget of more than MAX_TRAIN_STEPS optimizer steps (``words``: how the
    user gave it, e.g. "--epochs 99999999999"), with the time it would take at 0.1 ms a step."""
    if steps > MAX_TRAIN_STEPS:
        raise SizeError(f"{words} is {steps:,} optimizer steps: even at 0.1 ms a step that would take "
                        f"{_duration(steps * 1e-4)}; give a budget of at most {MAX_TRAIN_STEPS:,} steps")


def check_eval_fits(model: nn.Module, n: int, k: int, batch_size: int, option: str = "k", *,
                    passes: bool = True) -> None:
    """Refuse an evaluation of ``n`` points with ``k`` importance samples each that cannot fit in
    memory (one batch holds batch × k log-weights and log-likelihoods, float32 and float64) or
    that would make more than MAX_EVAL_PASSES decoder passes; ``option`` names the setting
    ("--k", "--eval-k") in the message. ``passes=False`` checks the memory only (before training,
    when the number of test points is not known yet)."""
    rows = min(n, batch_size)
    # At most half the memory: a batch that fits only just would leave nothing to the rest of the
    # machine (audit EV02: --k 10^7 on 100 points, 24 GB of 25, swapping without a word).
    check_fits(24.0 * rows * k, f"an evaluation batch of {rows:,} points × {option} {k:,} importance samples",
               f"use a smaller {option} (the default is 1000)", share=0.5)
    work = float(n) * k
    if passes and work > MAX_EVAL_PASSES:
        flops = 2.0 * sum(p.numel() for p in model.parameters()) * work
        raise SizeError(f"{option} {k:,} on {n:,} test points is {work:.3g} decoder passes, about "
                        f"{_duration(flops / _FLOPS_PER_SECOND)} of computing on a fast CPU; use at most "
                        f"{option} {max(1, MAX_EVAL_PASSES // max(n, 1)):,} for {n:,} points (the default is 1000)")
