"""Models: a VAE and a plain autoencoder, built from a ModelConfig."""

from __future__ import annotations

import torch

from vaelab.config import ModelConfig
from vaelab.models.ae import AE
from vaelab.models.vae import VAE, LatentModel, reparameterize, standard_normal

MODEL_CLASSES: dict[str, type[LatentModel]] = {"vae": VAE, "ae": AE}


def build_model(config: ModelConfig, x_dim: int, cond_dim: int = 0, seed: int | None = None) -> LatentModel:
    """The model described by ``config`` for data of dimension ``x_dim``.

    Weights use PyTorch's default layer initialisation. With ``seed`` the initial weights
    are a pure function of it (the global RNG is seeded inside a fork, so the caller's RNG
    state is left as it was); without it they come from the global RNG.
    """
    if seed is None:
        return MODEL_CLASSES[config.kind](config, x_dim, cond_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODEL_CLASSES[config.kind](config, x_dim, cond_dim)


__all__ = ["AE", "VAE", "LatentModel", "MODEL_CLASSES", "build_model", "reparameterize", "standard_normal"]
