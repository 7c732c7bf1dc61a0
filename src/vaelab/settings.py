"""Which settings of a run apply: names checked against their registries, and one rule per field.

vaelab.config only describes and type-checks a configuration (it is a leaf module); this
module knows what the settings mean. ``check_settings`` runs before anything is trained:
every name (dataset, model family, net, activation, likelihood, objective) must be one its
registry defines, and every setting the user gave must change what happens, else the run is
refused with a message naming the setting and what to use instead. A family's own options
(``[model.NAME]``, ``--NAME-FIELD``) are checked against the family's options class, and
apply only to a run of that family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vaelab.config import ConfigError, RunConfig, TrainConfig, family_setting, flag_name, lookup, parse_kind
from vaelab.data.registry import DATASETS
from vaelab.likelihoods import LIKELIHOODS
from vaelab.models import FAMILIES, LatentModel, VariationalModel, check_family_tables, family, option_applies
from vaelab.nets import ACTIVATIONS, NETS
from vaelab.objectives import OBJECTIVES, Objective, objective_name, requested_objective


def check_names(config: RunConfig) -> None:
    """Refuse a name that no registry defines, naming the setting, its flag and the choices.

    Raises:
        ConfigError: for the first unknown name, or a family options table with an unknown
            family, an unknown key or a bad value.
    """
    if config.data.path is None:
        lookup(DATASETS, config.data.name, "data.name", "dataset")
    family(config.model.kind)
    check_family_tables(config.model)
    lookup(NETS, config.model.net, "model.net", "net")
    lookup(ACTIVATIONS, config.model.activation, "model.activation", "activation")
    lookup(LIKELIHOODS, config.model.likelihood, "model.likelihood", "likelihood")
    lookup(OBJECTIVES, config.train.objective, "train.objective", "objective")


def _family_class(config: RunConfig) -> type[LatentModel]:
    return family(config.model.kind)


def _has_posterior(config: RunConfig) -> bool:
    """Whether the family has an inference network q(z|x): a KL term, samples of z, a bound to estimate."""
    return issubclass(_family_class(config), VariationalModel)


def _objective(config: RunConfig) -> Objective:
    """The objective the run trains with: the named one, the β-ELBO for a β-VAE run that names
    none (``objectives.requested_objective``), the family's own where it cannot take either."""
    return OBJECTIVES[objective_name(_family_class(config), config.train)]


def _one_sample_why(config: RunConfig) -> str:
    """Why k does not apply to a posterior model whose objective draws one sample."""
    name = _objective(config).name
    if name == "elbo" and requested_objective(config.train) != config.train.objective:
        return ("β ≠ 1, a β schedule or free bits make this a β-VAE, which trains the β-ELBO (one sample); "
                "add --objective iwae for the β-weighted IWAE with k samples (a bound only at β = 1)")
    return f"the {name} objective uses one sample; use --objective iwae for k importance samples"


def _objective_rule(config: RunConfig) -> str | None:
    cls = _family_class(config)
    if config.train.objective in cls.objectives:
        return None
    if cls.objectives == (cls.default_objective,):
        return f"{_family(config)} always trains on its {cls.default_objective!r} objective; drop it"
    return f"{_family(config)} trains with {' or '.join(cls.objectives)}; use one of them"


def _family(config: RunConfig) -> str:
    """How a message names the model family."""
    return f"the {config.model.kind} model ({_family_class(config).__name__})"


def _data_kind(config: RunConfig) -> str:
    """toy, file (a table of points), folder (images), digits or mnist (downloaded image sets)."""
    if config.data.path is not None:
        return "folder" if Path(config.data.path).expanduser().is_dir() else "file"
    if config.data.name in ("digits", "digits8"):
        return "digits"
    return "mnist" if DATASETS[config.data.name].kind == "image" else "toy"


def _continuous_condition(config: RunConfig) -> bool:
    return config.data.condition is not None and parse_kind(config.data.condition)[0] != "label"


def _data_name(config: RunConfig) -> str:
    return config.data.path or config.data.name


# One rule per field: None where the setting changes what is trained / evaluated, else why
# it would not and what to use instead. check_settings applies the rule of every field the
# user set; tests/test_settings.py checks that every field has a rule and that each rule is right.
_Rule = Callable[[RunConfig], "str | None"]


def _always(config: RunConfig) -> str | None:
    return None


# Helpers of the training-aids block of SETTING_RULES (KL schedules, free bits).
def _no_kl(config: RunConfig) -> str | None:
    """Training aids weigh or floor the KL term: refused for a model without one."""
    return None if _has_posterior(config) else f"{_family(config)} has no KL term; drop it or use --model vae"


def _needs_schedule(config: RunConfig, schedule: str, what: str) -> str | None:
    if config.train.beta_schedule == schedule:
        return None
    return f"it is {what} of --beta-schedule {schedule}, but the schedule is {config.train.beta_schedule}; " \
        f"add --beta-schedule {schedule} or drop it"


SETTING_RULES: dict[str, _Rule] = {
    "data.name": lambda c: None if c.data.path is None else (
        f"a data file ({c.data.path}) is given, so the dataset name {c.data.name!r} would be unused; give only one"),
    "data.path": _always,
    "data.label_column": lambda c: None if _data_kind(c) == "file" and str(c.data.path).lower().endswith(".csv") else (
        f"it names a column of a CSV file, but the data is {_data_name(c)}; drop it (registered datasets "
        "and .npz files, with an array named 'labels', carry their own labels)"),
    "data.condition": _always,
    "data.n_train": lambda c: None if _data_kind(c) == "toy" else (
        f"it is the number of points drawn from a toy distribution, but {_data_name(c)} is read as it is; "
        "use --limit-train to train on fewer points"),
    "data.n_test": lambda c: None if _data_kind(c) == "toy" else (
        f"it is the number of points drawn from a toy distribution, but {_data_name(c)} has its own test split; "
        "use --limit-test (or --test-fraction for a file)"),
    "data.test_fraction": lambda c: None if _data_kind(c) in ("file", "folder", "digits") else (
        f"it splits a user file, an image folder or digits, but {_data_name(c)} has its own test set; "
        "use --n-test for toy data, --image-split test-9k or --limit-test for MNIST-family sets"),
    "data.seed": lambda c: None if _data_kind(c) != "mnist" or c.data.binarize == "fixed" else (
        f"{c.data.name} is read from its official files, so there is no draw or split to seed; "
        "use --seed for the training noise"),
    "data.data_dir": lambda c: None if _data_kind(c) == "mnist" else (
        f"it is where MNIST-family files are downloaded, but the data is {_data_name(c)}; drop it"),
    "data.image_split": lambda c: None if _data_kind(c) == "mnist" else (
        f"it chooses the files of an MNIST-family set, but the data is {_data_name(c)}; use --test-fraction"),
    "data.image_size": lambda c: None if _data_kind(c) == "folder" else (
        f"it resizes the images of a folder, but the data is {_data_name(c)}; drop it"),
    "data.binarize": _always,  # checked against the values of the data when they are loaded
    "data.limit_train": _always,
    "data.limit_test": _always,
    "model.kind": _always,
    "model.net": _always,
    "model.channels": lambda c: None if c.model.net != "mlp" else "it sets the conv nets' channels; add --net conv "
    "or set --hidden for the MLP",
    "model.hidden": lambda c: None if c.model.net == "mlp" else "conv nets have no hidden MLP layers; use --channels "
    "(or --net mlp)",
    "model.activation": _always,
    "model.latent_dim": _always,
    "model.scale": lambda c: None if _family_class(c).reads_scale else (
        f"it parameterises the Normal q(z|x) of the VAE family (and the ladder's layers), which {_family(c)} does "
        "not have; drop it or use --model vae"),
    "model.likelihood": _always,
    "model.output_bias": _always,  # the model validator refuses it where it cannot apply
    "model.recon_var": lambda c: None if c.model.likelihood == "gaussian" else (
        f"it is σ² (λ_rec = 1/σ²) of the fixed-variance gaussian likelihood, but the likelihood is "
        f"{c.model.likelihood}; use --likelihood gaussian" + (
            ", or --min-var to bound the learned variance" if c.model.likelihood == "gaussian-learned" else "")),
    "model.cond_embed": lambda c: None if _continuous_condition(c) else (
        "it embeds a continuous condition (radius or column:NAME), but "
        + ("there is no condition" if c.data.condition is None else "labels are one-hot encoded")
        + "; drop it"),
    "model.min_var": lambda c: None if c.model.likelihood in ("gaussian-learned", "gaussian-sigmoid") else (
        f"it floors the learned variance of gaussian-learned, but the likelihood is {c.model.likelihood}"
        + ("; use --recon-var for the fixed σ²" if c.model.likelihood == "gaussian" else "; drop it")),
    "train.objective": _objective_rule,
    "train.beta": lambda c: None if _objective(c).uses_beta else (
        f"{_family(c)} has no KL term to weight; drop it or use --model vae"),
    "train.k": lambda c: None if _objective(c).uses_k else (
        f"{_family(c)} draws no samples; drop it or use --model vae" if not _has_posterior(c)
        else _one_sample_why(c)),
    "train.lr": _always,
    "train.lr_schedule": _always,
    "train.adam_betas": _always,
    "train.adam_eps": _always,
    "train.epochs": lambda c: None if c.train.steps is None else (
        "--steps is given and replaces the epoch budget; give only one of --epochs and --steps"),
    "train.steps": _always,
    "train.batch_size": _always,
    "train.seed": _always,
    "train.checkpoint_every": _always,
    "train.diversity_samples": _always,
    "train.nonfinite": _always,  # the non-finite policy (see vaelab.train.fit)
    "train.max_skips": lambda c: None if c.train.nonfinite == "skip" else (
        "it bounds the skipped steps of --nonfinite skip; add --nonfinite skip"),
    "train.grad_clip": _always,
    "train.compile": _always,  # every objective's step compiles (vaelab.train.compiled_objective)
    **{  # ----- training aids (issue 9): KL schedules and free bits; one block, moved as a whole -----
        "train.beta_schedule": lambda c: _no_kl(c) or (
            f"β = {c.train.beta:g}: a schedule of β = 0 is 0 at every step; give --beta > 0 or drop it"
            if c.train.beta == 0 and c.train.beta_schedule != "constant" else None),
        "train.warmup_epochs": lambda c: _no_kl(c) or _needs_schedule(c, "warmup", "the warm-up length"),
        "train.warmup_steps": lambda c: _no_kl(c) or _needs_schedule(c, "warmup", "the warm-up length"),
        "train.cycles": lambda c: _no_kl(c) or _needs_schedule(c, "cyclical", "the number of annealing cycles"),
        "train.cycle_ratio": lambda c: _no_kl(c) or _needs_schedule(c, "cyclical", "the rising share of a cycle"),
        "train.free_bits": lambda c: _no_kl(c) or (
            f"free bits floor the KL term of the ELBO, which the {_objective(c).name.upper()} objective does not "
            "have; add --objective elbo" if not _objective(c).uses_free_bits else None),
        "train.free_bits_group": lambda c: _no_kl(c) or (
            "it chooses what the free-bits floor applies to, but there is no floor; add --free-bits λ (nats)"
            if c.train.free_bits == 0 else None) or (
            f"layer floors the KL of each layer, and {_family(c)} has one latent layer; use --free-bits-group dim "
            "or all, or a hierarchical model (--model ladder)"
            if c.train.free_bits_group == "layer" and not _family_class(c).has_latent_groups else None),
    },  # ----- end of the training-aids block -----
    "eval.k": lambda c: None if _has_posterior(c) else (
        f"{_family(c)} has no likelihood bound to estimate; drop it or use --model vae"),
    "eval.batch_size": _always,
    "eval.seed": lambda c: None if _has_posterior(c) or c.data.condition is not None else (
        f"the evaluation of an unconditional {c.model.kind} model draws no noise; drop it"),
}


def _family_option_rule(dotted: str) -> _Rule | None:
    """The rule of a family's option ``model.NAME.FIELD`` (or of an empty ``[model.NAME]``
    table): it applies to a run of the family NAME only."""
    family = family_setting(dotted)
    if family is None:
        return None
    return lambda c: option_applies(c.model, family[0])


def setting_value(config: RunConfig, dotted: str) -> Any:
    """The value of a setting by its dotted name: a field (``model.hidden``), or a family's option
    (``model.tempered.tau_end``): as given in its table, else the family's default when the
    config is of that family, else None (the option plays no part in the run)."""
    family = family_setting(dotted)
    if family is None:
        section, field = dotted.split(".", 1)
        return getattr(getattr(config, section), field)
    name, option = family
    table = config.model.family_tables.get(name, {})
    if option in table or config.model.kind != name:
        return table.get(option)
    schema = FAMILIES[name].options if name in FAMILIES else None
    return None if schema is None or option not in schema.model_fields else getattr(
        config.model.family_options(schema), option)


def check_settings(config: RunConfig) -> None:
    """Refuse a config in which a setting the user gave would change nothing.

    Only the fields in each section's ``model_fields_set`` are checked (flags, a TOML file,
    keyword arguments), so defaults and presets never trigger a refusal.

    Raises:
        ConfigError: one line per setting that does not apply, saying why and what to use.
    """
    check_names(config)
    problems = []
    for dotted in config.user_settings():
        rule = SETTING_RULES.get(dotted) or _family_option_rule(dotted)
        if rule is None:
            raise ConfigError(f"{dotted}: no applicability rule (add one to vaelab.settings.SETTING_RULES)")
        why = rule(config)
        if why is not None:
            problems.append(f"  {flag_name(dotted)} does not apply here: {why}")
    if problems:
        raise ConfigError("settings that would change nothing:\n" + "\n".join(problems))


def unreached_free_bits(train: TrainConfig, kl_by_epoch: Sequence[float]) -> str | None:
    """Why a free-bits floor took the KL term out of training, or None: the floor λ was above
    the training KL in every epoch (audit TR05: ``--free-bits 1e6`` trained silently).

    Free bits (``objectives.free_bits_kl``) leave a group's KL without a gradient while the
    group's batch KL is below λ. No bound on λ can be checked before training: a Gaussian
    posterior's KL grows without limit as σ shrinks or μ moves, so any λ could be reached in
    principle. What can be checked is what happened: the history's "kl" (``kl_by_epoch``, the
    epoch means of the batch KL, summed over the latent) bounds each group's KL, so where it
    stayed below λ in every epoch, every group was floored (on average over each epoch) and
    the run trained, in effect, with β = 0: an autoencoder with a noisy code, not a VAE.
    """
    finite = [kl for kl in kl_by_epoch if math.isfinite(kl)]
    if train.free_bits <= 0 or not finite or max(finite) >= train.free_bits:
        return None
    per = {"dim": "per latent dimension", "layer": "per latent layer"}.get(train.free_bits_group,
                                                                            "for the whole latent")
    return (f"--free-bits {train.free_bits:g} floors the KL at {train.free_bits:g} nats {per}, but the KL of the whole "
            f"latent stayed below it in every epoch (at most {max(finite):.3g} nats): the KL term gave no gradient, so "
            "this run trained as with --beta 0, an autoencoder with a noisy code rather than a VAE. Free bits "
            "work below the KL a model reaches: give a --free-bits smaller than the KL per "
            f"{'dimension' if train.free_bits_group == 'dim' else 'group'} you want to keep (typically 0.1 to 2 nats), "
            "or drop it")
