"""Memory a request would need, checked before anything is allocated.

A typo such as ``--latent-dim 1000000000`` or ``--n-train 100000000000`` otherwise ends in an
allocator traceback, or in minutes of swapping before one. These checks estimate the bytes
from the sizes alone (a model is built on PyTorch's ``meta`` device, which allocates
nothing) and refuse what exceeds the machine's physical memory, saying how much it would take.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from vaelab.errors import InputError

if TYPE_CHECKING:
    from vaelab.config import ModelConfig, TrainConfig

FLOAT_BYTES = 4


class SizeError(InputError):
    """A requested size would need more memory than the machine has."""


def physical_memory() -> int:
    """Bytes of physical memory of this machine (a large fallback where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 2**40


def format_bytes(n: float) -> str:
    """1.5e12 -> '1.5 TB' (decimal units, as the allocator reports)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"  # unreachable


def check_fits(nbytes: float, what: str, fix: str) -> None:
    """Raise SizeError naming ``what`` and ``fix`` when ``nbytes`` exceed physical memory."""
    limit = physical_memory()
    if nbytes > limit:
        raise SizeError(
            f"{what} would need about {format_bytes(nbytes)} of memory, more than this machine's "
            f"{format_bytes(limit)}; {fix}"
        )


def _meta_model(
    config: ModelConfig, x_dim: int, cond_dim: int, cond_embed: Sequence[int]
) -> nn.Module:
    """The model on the meta device: its shapes without any memory behind them."""
    from vaelab.models import build_model

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
    from vaelab.models import LatentModel
    from vaelab.train import objective_name

    samples = train.k if objective_name(cast(LatentModel, model), train) == "iwae" else 1
    rows = train.batch_size * samples
    # x2: the forward activations and their gradients.
    check_fits(2.0 * rows * (_activation_width(model) + x_dim) * FLOAT_BYTES,
               f"a training step of --batch-size {train.batch_size} × --k {samples} samples",
               "use a smaller --k or --batch-size")


def check_decode_fits(model: nn.Module, n: int, what: str) -> None:
    """Refuse decoding n latent draws at once when their activations cannot fit."""
    width = _activation_width(model) + int(getattr(model, "x_dim", 0))
    check_fits(float(n) * width * FLOAT_BYTES, what, "ask for fewer")


def check_rows_fit(n: int, dim: int, what: str, fix: str) -> None:
    """Refuse drawing an (n, dim) table of float64 values (as generated, before the float32 copy)."""
    check_fits(float(n) * dim * 12, what, fix)
