"""Models: one class per family, built from a ModelConfig; ``FAMILIES`` is the list of them.

Built-in families are listed below; families from outside vaelab (``vaelab.plugins``: the
``vaelab.families`` entry points, ``VAELAB_PLUGINS``, ``vaelab --plugin``) join the same list,
the first time it is read, and behave exactly like built-in ones.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence

import torch
from torch import Tensor

from vaelab import plugins
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
from vaelab.models.gumbel import GumbelSoftmaxVAE
from vaelab.models.ladder import LadderVAE
from vaelab.models.priors import MixtureOfGaussiansVAE, VampVAE
from vaelab.models.vae import VAE
from vaelab.models.vq import VQVAE

BUILTIN_FAMILIES: dict[str, type[LatentModel]] = {
    "vae": VAE, "ae": AE,
    "planar": PlanarVAE, "radial": RadialVAE, "iaf": IAFVAE,
    "vamp": VampVAE, "mog": MixtureOfGaussiansVAE,
    "ladder": LadderVAE,
    "gumbel": GumbelSoftmaxVAE,
    "vq": VQVAE,
}


class FamilyRegistry(MutableMapping[str, type[LatentModel]]):
    """model.kind -> the class that builds it: the built-in families, then the outside ones.

    The first read (a lookup, ``in``, iterating) loads the outside families once: every
    ``vaelab.families`` entry point, then the modules of ``VAELAB_PLUGINS`` (vaelab.plugins).
    Nothing is loaded at import, so start-up stays cheap. An entry point that fails is kept
    in ``broken`` (name -> the error, naming its distribution and the cause) instead of
    breaking the other families; ``family(name)`` raises it.
    """

    def __init__(self, builtin: dict[str, type[LatentModel]]) -> None:
        self._classes = dict(builtin)
        self._broken: dict[str, str] = {}
        self._loaded = False

    @property
    def broken(self) -> dict[str, str]:
        """The entry points that failed to load: family name -> the error (distribution, cause)."""
        self._load()
        return self._broken

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before loading: the plugins' register_family calls read the registry
        try:
            for ep in plugins.family_entry_points():
                try:  # (the same class registered again, by its own module, is no conflict)
                    register_family(ep.name, plugins.load_entry_point(ep))  # type: ignore[arg-type]
                except InputError as err:
                    self._broken[ep.name] = (str(err) if isinstance(err, plugins.PluginError) else
                                            f"the model family {ep.name!r} cannot be loaded: "
                                            f"{plugins.describe_entry_point(ep)}: {err}")
            plugins.import_plugins(plugins.env_plugins(), plugins.ENV_VAR)
        except BaseException:
            self._loaded = False  # a VAELAB_PLUGINS module failed: raised again on the next read
            raise

    def __getitem__(self, name: str) -> type[LatentModel]:
        self._load()
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._classes))

    def __len__(self) -> int:
        self._load()
        return len(self._classes)

    def __setitem__(self, name: str, cls: type[LatentModel]) -> None:
        self._classes[name] = cls
        self._broken.pop(name, None)

    def __delitem__(self, name: str) -> None:
        del self._classes[name]

    def __repr__(self) -> str:
        return f"FamilyRegistry({', '.join(self._classes)})"


# model.kind -> the class that builds it. The one list of families: build_model, checkpoint
# loading and config validation read it; register_family (and the plugins) add to it.
FAMILIES = FamilyRegistry(BUILTIN_FAMILIES)


def register_family(name: str, cls: type[LatentModel]) -> None:
    """Make ``cls`` buildable as ``model.kind = name`` (train, save, load, evaluate, plot).

    ``cls(config, x_dim, cond_dim[, cond_embed=...])`` must build it, and its
    ``default_objective`` / ``objectives`` must name registered objectives. Its ``options``
    (a ``FamilyOptions`` subclass, or None) are then the ``[model.NAME]`` table and the
    ``--NAME-FIELD`` flags. A run of it records ``family_source(name)``, the module to import
    to load the run again (see docs/plugins.md).
    """
    if not (isinstance(cls, type) and issubclass(cls, LatentModel)):
        raise InputError(f"a family must be a LatentModel subclass, got {cls!r}")
    if name in FAMILIES and FAMILIES[name] is not cls:
        raise InputError(f"a family named {name!r} is already registered ({_source(FAMILIES[name])})")
    if name in ModelConfig.model_fields or name == "lambda_rec":
        raise InputError(f"a family cannot be named {name!r}: [model.{name}] would be its options table, but "
                         f"model.{name} is a setting of every model; choose another name")
    if cls.options is not None and not (isinstance(cls.options, type) and issubclass(cls.options, FamilyOptions)):
        raise InputError(f"{cls.__name__}.options must be a vaelab.config.FamilyOptions subclass (or None), "
                         f"got {cls.options!r}")
    FAMILIES[name] = cls


def _source(cls: type) -> str:
    """``module:QualifiedName`` of a class: what a run records, and an entry point's value."""
    return f"{cls.__module__}:{cls.__qualname__}"


def family_source(kind: str) -> str | None:
    """Where an outside family comes from, ``module:Class`` (recorded by the runs it trains, so
    loading one imports the module); None for a built-in family, or one not registered."""
    cls = FAMILIES.get(kind)
    return None if cls is None or BUILTIN_FAMILIES.get(kind) is cls else _source(cls)


def family(kind: str) -> type[LatentModel]:
    """The class registered as ``kind``.

    Raises:
        InputError: the family comes from an entry point that failed to load (naming its
            distribution and the cause), or it is unknown (naming the known families and how
            to add one of one's own).
    """
    if kind in FAMILIES.broken and kind not in FAMILIES:
        raise plugins.PluginError(FAMILIES.broken[kind])
    try:
        return lookup(FAMILIES, kind, "model.kind", "model family")
    except ConfigError as err:
        broken = "".join(f"; {why}" for name, why in FAMILIES.broken.items() if name != kind)
        raise ConfigError(f"{err}; a family of your own is loaded with vaelab --plugin MODULE, "
                          f"{plugins.ENV_VAR}=MODULE or a {plugins.ENTRY_POINT_GROUP} entry point "
                          f"(see {plugins.DOCS}){broken}") from None


def family_of_run(kind: str, source: str | None) -> type[LatentModel]:
    """The class of a saved run's family: registered already, or registered by importing the
    module the run recorded (``source``, ``module:Class``; None for built-in families and
    runs older than the record).

    Importing the module normally registers the family; when it does not (the run was trained
    through an entry point that is not installed here), the recorded class is registered.

    Raises:
        InputError: the family is unknown and no module is recorded; or the module cannot be
            imported (naming it, the --plugin to give and what to install); or it neither
            registers the family nor defines the recorded class.
    """
    if source is None or kind in FAMILIES or kind in FAMILIES.broken:
        return family(kind)
    module = plugins.import_recorded(kind, source)
    if kind not in FAMILIES:
        obj: object = module
        for part in source.partition(":")[2].split("."):
            obj = getattr(obj, part, None)
        if not (isinstance(obj, type) and issubclass(obj, LatentModel)):
            raise plugins.PluginError(f"the run's model family {kind!r} comes from {source}: importing "
                                      f"{module.__name__} registered no family {kind!r} and it defines no such "
                                      "class; register it in that module (register_family) or pass the plugin "
                                      "that does (--plugin MODULE)")
        register_family(kind, obj)
    return family(kind)


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


def init_output_bias(model: LatentModel, x: Tensor) -> None:
    """Set the decoder's output bias to the logits of the mean of the training points x (N, D),
    each pixel's mean clipped to [0.001, 0.999]: Burda et al.'s initialisation (yburda/iwae), which
    ``model.output_bias = "data-mean"`` asks for. The untrained decoder then gives every pixel its
    training frequency wherever the rest of its output is 0.

    Raises:
        InputError: the decoder's last layer is not a linear layer onto the model's x_dim pixels,
            or x does not have the model's width.
    """
    decoder = getattr(model, "decoder", None)
    last = decoder[-1] if isinstance(decoder, torch.nn.Sequential) and len(decoder) else None
    if not isinstance(last, torch.nn.Linear) or last.bias is None or last.out_features != model.x_dim:
        raise InputError(f"output_bias = 'data-mean' needs a decoder whose last layer is a linear layer onto the "
                         f"{model.x_dim} pixels' logits, and the {model.config.kind} decoder has none; drop it")
    if x.ndim != 2 or x.shape[1] != model.x_dim or x.shape[0] == 0:
        raise InputError(f"output_bias = 'data-mean' needs the training points as (N, {model.x_dim}), "
                         f"got shape {tuple(x.shape)}")
    mean = x.detach().to(torch.float64).mean(0).clamp(0.001, 0.999)
    with torch.no_grad():
        last.bias.copy_(torch.logit(mean).to(last.bias))


def build_model(
    config: ModelConfig, x_dim: int, cond_dim: int = 0, seed: int | None = None,
    cond_embed: Sequence[int] = (), train_x: Tensor | None = None,
) -> LatentModel:
    """The model described by ``config`` for data of dimension ``x_dim``.

    ``cond_dim`` is the width of the condition c (0: unconditional); ``cond_embed`` the
    widths of the MLP that embeds a continuous c before it is concatenated (empty: c is
    concatenated as given, e.g. a one-hot label). Weights use PyTorch's default layer
    initialisation. With ``seed`` the initial weights are a pure function of it (the global
    RNG is seeded inside a fork, so the caller's RNG state is left as it was); without it
    they come from the global RNG.

    ``train_x`` (N, x_dim): the training points, which ``config.output_bias = "data-mean"``
    starts the decoder's output bias from (:func:`init_output_bias`); ``vaelab train`` and sweeps
    pass them. A model built to load saved weights into needs none: the weights replace the bias.
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
        model = cls(config, x_dim, cond_dim, **extra)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config, x_dim, cond_dim, **extra)
    if config.output_bias == "data-mean" and train_x is not None:
        init_output_bias(model, train_x)
    return model


__all__ = ["AE", "BUILTIN_FAMILIES", "FAMILIES", "IAFVAE", "FamilyRegistry", "GumbelSoftmaxVAE", "LadderVAE",
           "LatentModel", "MixtureOfGaussiansVAE", "PlanarVAE", "RadialVAE", "VAE", "VQVAE", "VampVAE",
           "VariationalModel", "build_model", "check_family_tables", "condition_embedding", "family", "family_of_run",
           "family_options", "family_source", "has_normal_posterior", "has_standard_prior", "init_output_bias",
           "option_applies", "option_schemas", "register_family", "standard_normal"]
