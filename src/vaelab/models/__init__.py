"""Models: a VAE and a plain autoencoder, built from a ModelConfig."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vaelab.config import ModelConfig
from vaelab.models.ae import AE
from vaelab.models.vae import VAE, LatentModel, condition_embedding, reparameterize, standard_normal

MODEL_CLASSES: dict[str, type[LatentModel]] = {"vae": VAE, "ae": AE}


def build_model(
    config: ModelConfig, x_dim: int, cond_dim: int = 0, seed: int | None = None,
    cond_embed: Sequence[int] = (),
) -> LatentModel:
    """The model described by ``config`` for data of dimension ``x_dim``.

    ``cond_dim`` is the width of the condition c (0: unconditional); ``cond_embed`` the
    widths of the MLP that embeds a continuous c before it is concatenated (empty: c is
    concatenated as given, e.g. a one-hot label). Weights use PyTorch's default layer
    initialisation. With ``seed`` the initial weights are a pure function of it (the global
    RNG is seeded inside a fork, so the caller's RNG state is left as it was); without it
    they come from the global RNG.
    """
    # Only conditional models with an embedding need the keyword, so model classes that
    # take no continuous conditions keep the plain (config, x_dim, cond_dim) signature.
    extra = {"cond_embed": tuple(cond_embed)} if cond_dim and cond_embed else {}
    if seed is None:
        return MODEL_CLASSES[config.kind](config, x_dim, cond_dim, **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODEL_CLASSES[config.kind](config, x_dim, cond_dim, **extra)


__all__ = ["AE", "VAE", "LatentModel", "MODEL_CLASSES", "build_model", "condition_embedding",
           "reparameterize", "standard_normal"]
