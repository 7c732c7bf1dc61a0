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
from vaelab.memory import FLOAT_BYTES, check_fits
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
    widths = (f"--channels {','.join(map(str, config.channels))}" if config.net == "conv"
              else f"--hidden {','.join(map(str, config.hidden))}")
    check_fits(n_params * FLOAT_BYTES * factor,
               f"a model with {n_params:,} weights (--latent-dim {config.latent_dim}, {widths})",
               f"use a smaller --latent-dim or {widths.split()[0]}")
    if train is None:
        return
    # The diversity column decodes diversity_samples prior draws at once after every epoch.
    check_fits(float(train.diversity_samples) * (_activation_width(model) + x_dim) * FLOAT_BYTES,
               f"diversity_samples = {train.diversity_samples} decoded at once", "use fewer diversity_samples")
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
