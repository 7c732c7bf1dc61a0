"""Models: one class per family, built from a ModelConfig; ``FAMILIES`` is the list of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vaelab.config import ModelConfig, lookup
from vaelab.distributions import standard_normal
from vaelab.errors import InputError
from vaelab.models.ae import AE
from vaelab.models.base import (
    LatentModel,
    VariationalModel,
    condition_embedding,
    has_normal_posterior,
    has_standard_prior,
)
from vaelab.models.vae import VAE

# model.kind -> the class that builds it. The one list of families: build_model, checkpoint
# loading and config validation read it; register_family adds to it.
FAMILIES: dict[str, type[LatentModel]] = {"vae": VAE, "ae": AE}


def register_family(name: str, cls: type[LatentModel]) -> None:
    """Make ``cls`` buildable as ``model.kind = name`` (train, save, load, evaluate, plot).

    ``cls(config, x_dim, cond_dim[, cond_embed=...])`` must build it, and its
    ``default_objective`` / ``objectives`` must name registered objectives.
    """
    if not (isinstance(cls, type) and issubclass(cls, LatentModel)):
        raise InputError(f"a family must be a LatentModel subclass, got {cls!r}")
    if name in FAMILIES and FAMILIES[name] is not cls:
        raise InputError(f"a family named {name!r} is already registered ({FAMILIES[name].__name__})")
    FAMILIES[name] = cls


def family(kind: str) -> type[LatentModel]:
    """The class registered as ``kind``; an InputError naming the known families otherwise."""
    return lookup(FAMILIES, kind, "model.kind", "model family")


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
    cls = family(config.kind)
    # Only conditional models with an embedding need the keyword, so model classes that
    # take no continuous conditions keep the plain (config, x_dim, cond_dim) signature.
    extra = {"cond_embed": tuple(cond_embed)} if cond_dim and cond_embed else {}
    if seed is None:
        return cls(config, x_dim, cond_dim, **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config, x_dim, cond_dim, **extra)


__all__ = ["AE", "FAMILIES", "VAE", "LatentModel", "VariationalModel", "build_model", "condition_embedding", "family",
           "has_normal_posterior", "has_standard_prior", "register_family", "standard_normal"]
