"""Models: one class per family, built from a ModelConfig; ``FAMILIES`` is the list of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vaelab.config import ConfigError, FamilyOptions, ModelConfig, flag_name, lookup, parse_family_options
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
from vaelab.models.flows import IAFVAE, PlanarVAE, RadialVAE
from vaelab.models.ladder import LadderVAE
from vaelab.models.priors import MixtureOfGaussiansVAE, VampVAE
from vaelab.models.vae import VAE

# model.kind -> the class that builds it. The one list of families: build_model, checkpoint
# loading and config validation read it; register_family adds to it.
FAMILIES: dict[str, type[LatentModel]] = {
    "vae": VAE, "ae": AE,
    "planar": PlanarVAE, "radial": RadialVAE, "iaf": IAFVAE,
    "vamp": VampVAE, "mog": MixtureOfGaussiansVAE,
    "ladder": LadderVAE,
}


def register_family(name: str, cls: type[LatentModel]) -> None:
    """Make ``cls`` buildable as ``model.kind = name`` (train, save, load, evaluate, plot).

    ``cls(config, x_dim, cond_dim[, cond_embed=...])`` must build it, and its
    ``default_objective`` / ``objectives`` must name registered objectives. Its ``options``
    (a ``FamilyOptions`` subclass, or None) are then the ``[model.NAME]`` table and the
    ``--NAME-FIELD`` flags.
    """
    if not (isinstance(cls, type) and issubclass(cls, LatentModel)):
        raise InputError(f"a family must be a LatentModel subclass, got {cls!r}")
    if name in FAMILIES and FAMILIES[name] is not cls:
        raise InputError(f"a family named {name!r} is already registered ({FAMILIES[name].__name__})")
    if name in ModelConfig.model_fields or name == "lambda_rec":
        raise InputError(f"a family cannot be named {name!r}: [model.{name}] would be its options table, but "
                         f"model.{name} is a setting of every model; choose another name")
    if cls.options is not None and not (isinstance(cls.options, type) and issubclass(cls.options, FamilyOptions)):
        raise InputError(f"{cls.__name__}.options must be a vaelab.config.FamilyOptions subclass (or None), "
                         f"got {cls.options!r}")
    FAMILIES[name] = cls


def family(kind: str) -> type[LatentModel]:
    """The class registered as ``kind``; an InputError naming the known families otherwise."""
    return lookup(FAMILIES, kind, "model.kind", "model family")


def option_schemas() -> dict[str, type[FamilyOptions]]:
    """Registered name -> options class, for every family that declares options (``options``).

    The one source of the ``[model.NAME]`` tables, the ``--NAME-FIELD`` flags of ``vaelab train``
    and ``vaelab sweep`` (vaelab.sweep.grid.flag_table) and their help."""
    return {name: cls.options for name, cls in FAMILIES.items() if cls.options is not None}


def option_applies(config: ModelConfig, name: str) -> str | None:
    """None when the ``[model.NAME]`` table applies to ``config`` (NAME is its kind), else why
    not and what to do instead (the rule of vaelab.settings for every family option)."""
    if name == config.kind:
        return None
    return (f"it is an option of the {name} family: it applies only to --model {name}, and the model is "
            f"{config.kind}; add --model {name} or drop it")


def check_family_tables(config: ModelConfig) -> None:
    """Check every ``[model.NAME]`` table: NAME is a family that declares options, each key one
    of them, each value valid. (Whether a table applies to the run, i.e. NAME is its kind, is
    the rule ``option_applies``.)

    Raises:
        ConfigError: a table of an unknown family or of one without options (naming the
            families with options), an unknown key (naming the known ones), or a bad value.
    """
    schemas = option_schemas()
    for name, table in config.family_tables.items():
        if name not in schemas:
            what = (f"the {name} family ({FAMILIES[name].__name__}) has no options" if name in FAMILIES
                    else f"unknown model family {name!r}")
            raise ConfigError(f"{flag_name(f'model.{name}')}: {what}; the families with options are: "
                              f"{', '.join(schemas) or 'none'} (all families: {', '.join(FAMILIES)})")
        parse_family_options(name, table, schemas[name])


def family_options(config: ModelConfig) -> FamilyOptions | None:
    """The options of the config's family (``kind``), validated with the defaults filled in;
    None if the family declares none. Every table is checked (``check_family_tables``), and a
    table of another family is refused: it would change nothing.

    (A family reads its own options with ``config.family_options(MyOptions)``, typed; this is
    the registry's view, for code that does not know the family.)
    """
    check_family_tables(config)
    for name, table in config.family_tables.items():
        why = option_applies(config, name)
        if why is not None:
            given = [f"model.{name}.{option}" for option in table] or [f"model.{name}"]
            raise ConfigError(f"{', '.join(flag_name(d) for d in given)}: {why}")
    schema = option_schemas().get(config.kind)
    return None if schema is None else config.family_options(schema)


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
    # Sizes are whole numbers: True (a bool) or 2.0 built a 1-input model or failed deep in
    # torch, and cond_dim = -1 shrank the encoder's input (audit AP14, AP15, AP16, AP47).
    for name, value, least in (("x_dim", x_dim, 1), ("cond_dim", cond_dim, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an integer >= {least}, got {value!r}")
    if cond_embed and not cond_dim:
        raise InputError(f"cond_embed = {list(cond_embed)} embeds a condition, but cond_dim = 0 (no condition); "
                         "give cond_dim, or drop cond_embed")
    cls = family(config.kind)
    family_options(config)  # the [model.NAME] tables, checked before anything is built
    # Only conditional models with an embedding need the keyword, so model classes that
    # take no continuous conditions keep the plain (config, x_dim, cond_dim) signature.
    extra = {"cond_embed": tuple(cond_embed)} if cond_dim and cond_embed else {}
    if seed is None:
        return cls(config, x_dim, cond_dim, **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config, x_dim, cond_dim, **extra)


__all__ = ["AE", "FAMILIES", "IAFVAE", "LadderVAE", "LatentModel", "MixtureOfGaussiansVAE", "PlanarVAE", "RadialVAE",
           "VAE", "VampVAE", "VariationalModel", "build_model", "check_family_tables", "condition_embedding",
           "family", "family_options", "has_normal_posterior", "has_standard_prior", "option_applies",
           "option_schemas", "register_family", "standard_normal"]
