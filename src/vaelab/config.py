"""Validated run configuration: data / model / train / eval, from defaults, TOML and CLI flags.

The configuration is the single source of truth of a run: it is saved as ``config.json`` in
the run directory and is enough, with the weights, to rebuild the model.

Precedence: defaults < ``--config file.toml`` < explicit command-line flags.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vaelab.errors import InputError

# Names that a registry defines (datasets, families, nets, activations, likelihoods,
# objectives) are plain strings here: this module is a leaf (it imports nothing else from
# vaelab but its error types), so each name is checked at use against the one registry that
# implements it, with ``lookup`` below (see vaelab.settings.check_names). The choices that
# are not registries, but options of one piece of code, stay Literal types.
ScaleParam = Literal["logvar", "softplus", "exp"]
ImageSplit = Literal["official", "test-9k"]
BinarizeName = Literal["auto", "none", "dynamic", "fixed"]


# Steps that ``nonfinite = "skip"`` may skip when max_skips is not given.
DEFAULT_MAX_SKIPS = 10


class ConfigError(InputError):
    """A configuration value is invalid; the message names the field and what is allowed."""


# Seeds feed torch.Generator.manual_seed, which takes 64-bit values; derived seeds (the test
# split's offset, per-epoch seeds) stay inside 64 bits for every seed of this range.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
INT64_MAX = 2**63 - 1


def _check_seed(value: int) -> int:
    if not SEED_MIN <= value <= SEED_MAX:
        raise InputError(f"seeds are 64-bit integers: use a value between {SEED_MIN} and {SEED_MAX}")
    return value


def check_seed_option(value: int | None, option: str) -> None:
    """Refuse a seed that torch cannot take, naming the option (``--seed``); None passes.

    The one seed check of the library: commands, evaluation and figures all call it.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not SEED_MIN <= value <= SEED_MAX:
        raise ConfigError(f"{option} must be an integer from -2^63 to 2^63 - 1 ({SEED_MIN} to {SEED_MAX}), "
                          f"got {value!r}: seeds are 64-bit integers, pick a smaller one")


# Training runs in float32: a setting outside its range would become inf or 0 there
# (--beta 1e39, --recon-var 1e-300), which the float64 check of the config alone would miss.
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38


_COLUMN = re.compile(r"^column:(.+)$")


def parse_kind(kind: str) -> tuple[str, list[str]]:
    """Check a condition kind and return (normalised kind, CSV column names).

    ``"label"`` and ``"radius"`` have no columns; ``"column:a, b"`` -> ``("column:a,b", ["a", "b"])``.
    This is the syntax of the ``data.condition`` setting; what a condition means lives in
    vaelab.conditions.
    """
    text = kind.strip()
    if text in ("label", "radius"):
        return text, []
    match = _COLUMN.match(text)
    if match:
        names = [n.strip() for n in match.group(1).split(",")]
        if all(names) and len(set(names)) == len(names):
            return "column:" + ",".join(names), names
    raise ConfigError(
        f"unknown condition {kind!r}; use label (class labels), radius (‖x‖ of 2D points) "
        "or column:NAME[,NAME...] (numeric CSV columns used as a continuous condition)"
    )


T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, dotted: str, what: str) -> T:
    """``table[name]``, or a ConfigError that names the setting, the bad value and the choices.

    Every registry (datasets, model families, nets, activations, likelihoods, objectives)
    looks its names up with this one function, so a typo gets the same message wherever it
    is found: when the settings are checked (vaelab.settings) or when the piece is built.
    """
    if isinstance(name, str) and name in table:
        return table[name]
    raise ConfigError(f"{flag_name(dotted)}: unknown {what} {name!r}; choose one of: {', '.join(table)}")


class _Section(BaseModel):
    """A table of the configuration. A bad value, given to the constructor or assigned
    (``cfg.train.epochs = -1``), is a ConfigError naming the field and what it takes; an
    assignment that is refused leaves the config as it was."""

    # strict: a TOML ``epochs = true`` or ``lr = "1e-3"`` is refused, not read as 1 epoch /
    # coerced; an int is still accepted for a float field. validate_assignment: a field set
    # after construction is checked as the constructor checks it.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(_section_errors(type(self), err, f"invalid configuration in {type(self).__name__}(...)")
                              ) from None

    # Validation itself (from_dict, a table inside RunConfig) keeps pydantic's own path and its
    # errors located field by field: this __init__ runs only when a table is called directly.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):  # pydantic's own records (__pydantic_fields_set__, ...)
            super().__setattr__(name, value)
            return
        before = (dict(self.__dict__), None if self.__pydantic_extra__ is None else dict(self.__pydantic_extra__),
                  set(self.__pydantic_fields_set__))
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            # pydantic has already stored the value when a rule across fields (a model validator)
            # refuses it: put everything back, so a refused assignment changes nothing.
            object.__setattr__(self, "__dict__", before[0])
            object.__setattr__(self, "__pydantic_extra__", before[1])
            object.__setattr__(self, "__pydantic_fields_set__", before[2])
            where = ".".join(part for part in (_section_name(type(self)), name) if part)
            old = before[0].get(name)
            kept = f"the config keeps {where} = {old!r}" if name in before[0] and not isinstance(old, BaseModel) \
                else "nothing was changed"
            raise ConfigError(_section_errors(
                type(self), err, f"invalid configuration in the assignment {where} = {value!r} ({kept})")) from None

    @field_validator("*")
    @classmethod
    def _finite_in_float32(cls, value: Any) -> Any:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InputError("must be a finite number")
            if value != 0 and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
                raise InputError(
                    f"{value:g} is outside float32's range (±{FLOAT32_TINY:.3g} to ±{FLOAT32_MAX:.3g}), the "
                    "precision vaelab trains in; it would become 0 or inf"
                )
        return value


class FamilyOptions(_Section):
    """The options of one model family: the base of the class a family declares as ``options``.

    A family registered as NAME (``vaelab.models.register_family``) with ``options = MyOptions``
    takes them in a ``[model.NAME]`` TOML table and as ``vaelab train --model NAME --NAME-FIELD
    value`` flags; ``vaelab sweep`` sweeps them like any flag. Strict like every section: an
    unknown key is refused, an int is taken for a float but no string for a number, and floats
    must be finite in float32. Each field's ``description`` is its flag's help. A field of
    type int, float, bool, str, a Literal or a list of ints has a flag; any other (a nested
    table) is set in TOML only. docs/families.md shows a whole family.
    """


FamilyOptionsT = TypeVar("FamilyOptionsT", bound=FamilyOptions)


def parse_family_options(name: str, table: Mapping[str, Any], schema: type[FamilyOptionsT]) -> FamilyOptionsT:
    """The ``[model.NAME]`` table validated against the family's options class, defaults filled in.

    Raises:
        ConfigError: an unknown key (naming the ones the family takes) or a bad value, each
            named as ``model.NAME.FIELD (--NAME-FIELD)``.
    """
    unknown = [key for key in table if key not in schema.model_fields]
    if unknown:
        takes = ", ".join(schema.model_fields) or "no options"
        raise ConfigError("\n".join(
            f"{flag_name(f'model.{name}.{key}')}: unknown option of the {name} family; [model.{name}] takes {takes}"
            for key in unknown))
    try:
        return schema.model_validate(dict(table))
    except ValidationError as err:
        lines = [f"invalid options of the {name} family ([model.{name}]):"]
        for e in err.errors():
            where = flag_name(f"model.{name}.{e['loc'][0]}") if e["loc"] else f"model.{name}"
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"  {where}: {e['msg'].removeprefix('Value error, ')}{got}")
        raise ConfigError("\n".join(lines)) from None


class DataConfig(_Section):
    """Which data to train and evaluate on."""

    name: str = Field("radial_gmm", description="registered dataset name (see `vaelab datasets`)")
    path: str | None = Field(None, description="user data file (.npy/.npz/.csv, N x D); overrides name")
    label_column: str | None = Field(None, description="CSV header column holding class labels")
    condition: str | None = Field(
        None, description="condition on: label, radius or column:NAME[,NAME...] (CSV columns)"
    )
    n_train: int = Field(2000, gt=0, description="training points drawn from a toy distribution")
    n_test: int = Field(2000, gt=0, description="held-out points drawn for evaluation")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of a user file held out for evaluation")
    seed: int = Field(0, description="seed of the data draw / split")
    # Images (see vaelab.data.mnist, vaelab.data.download and vaelab.data.pixels).
    data_dir: str | None = Field(
        None, description="root folder of downloaded image datasets (else $VAELAB_DATA_DIR, then ~/.cache/vaelab)"
    )
    image_split: ImageSplit = Field(
        "official",
        description="official train/test files, or test-9k: first 9,000 images of the official test "
        "files for training and the last 1,000 for testing (needs only the t10k files)",
    )
    image_size: int = Field(28, gt=0, description="side in pixels that images of a folder are resized to")
    binarize: BinarizeName = Field(
        "auto",
        description="pixels as {0,1}: dynamic (re-drawn x ~ Bernoulli(grey level) every epoch), fixed "
        "(drawn once, seeded), none, or auto (dynamic for a Bernoulli likelihood on images, else none)",
    )
    limit_train: int | None = Field(None, gt=0, description="use only the first N training points")
    limit_test: int | None = Field(None, gt=0, description="use only the first N test points")

    _seed = field_validator("seed")(_check_seed)

    @field_validator("condition")
    @classmethod
    def _known_condition(cls, value: str | None) -> str | None:
        return None if value is None else parse_kind(value)[0]

    @property
    def condition_columns(self) -> list[str]:
        """CSV columns named by ``condition = "column:NAME,..."``: held out of x as condition."""
        return [] if self.condition is None else parse_kind(self.condition)[1]


_NOT_A_TABLE, _GOT = ": unknown option; [model] takes ", "\x00got "


class ModelConfig(_Section):
    """Architecture of the encoder / decoder and the likelihood p(x|z).

    ``recon_var`` is σ² of a fixed-variance Gaussian likelihood. Its inverse λ_rec = 1/σ²
    is the "reconstruction weight" of course material: -log p(x|z) = λ_rec/2 ‖x - μ(z)‖²
    + const, so raising λ_rec is the same knob as lowering σ². Give either name, not both
    with different values.

    A family's own options are ``[model.NAME]`` tables (NAME: the family's registered kind, e.g.
    ``[model.tempered]`` with ``tau_end = 0.5``), kept as given in ``family_tables``. This leaf
    module cannot know the families (they register at runtime), so the tables are checked
    against their ``FamilyOptions`` class where the registry is known: ``vaelab.settings``
    (names, keys, values, and that only the run's own family has a table) and
    ``vaelab.models.build_model``, which fill in the defaults. A key of [model] that is no
    field must be such a table; any other is refused as an unknown option.
    """

    # The [model.NAME] tables: pydantic keeps the keys that are no field here (its "extra"),
    # each checked to be a table (a dict) by ``_tables_are_tables``; a scalar typo such as
    # ``hiden = [8]`` is refused by that. (Not by annotating __pydantic_extra__: with
    # validate_assignment, pydantic then keeps that name itself as an extra key on assignment.)
    model_config = ConfigDict(extra="allow", validate_assignment=True, strict=True)

    kind: str = Field("vae", description="model family (vaelab.models.FAMILIES): vae, or ae (autoencoder baseline)")
    net: str = Field("mlp", description="encoder/decoder body: mlp, conv (square images), or resconv (conv "
                     "with NVAE-style residual cells); the conv bodies take channels, not hidden")
    channels: list[int] = Field(
        default_factory=lambda: [8, 16, 32], description="channels of the stride-2 convolutions (net=conv, resconv)"
    )
    # 2x256, not 2x128: chosen by the worst gap to the true entropy over every exact-density 2-D
    # data set (docs/defaults-2d.md). With 2x128 (or 2x192) the banana run keeps one active latent
    # unit and stays 0.51 nats from the entropy on every seed tried; 2x256 closes it to ~0.03.
    hidden: list[int] = Field(default_factory=lambda: [256, 256], description="hidden layer sizes of each MLP")
    activation: str = Field("tanh", description="activation of the hidden layers")
    latent_dim: int = Field(2, gt=0, description="dimension of z")
    scale: ScaleParam = Field("logvar", description="encoder scale parameterisation")
    likelihood: str = Field("gaussian-learned", description="p(x|z): gaussian, gaussian-learned, bernoulli, or for grey"
                            " levels in [0, 1] gaussian-sigmoid, continuous-bernoulli or logistic256")
    recon_var: float = Field(0.1, gt=0, description="σ² of the fixed-variance Gaussian likelihood")
    min_var: float = Field(
        1e-6, gt=0,
        description="floor of the learned Gaussian variance, σ²(z) = min_var + exp(h(z)) "
        "(gaussian-learned); keeps -log p(x|z) bounded on repeated or discrete values",
    )
    cond_embed: list[int] = Field(
        default_factory=lambda: [16, 16],
        description="widths of the MLP that embeds a continuous condition ([]: use it raw)",
    )
    # Burda et al.'s code (yburda/iwae, iwae.py) starts the decoder's output bias at the logits of
    # the training pixels' mean, so that an untrained decoder already draws the average image.
    output_bias: Literal["default", "data-mean"] = Field(
        "default", description="the decoder's output bias at the start: default (PyTorch's initialisation) or "
        "data-mean (the logits of the training pixels' mean, clipped to [0.001, 0.999]: Bernoulli MLP decoders)",
    )

    @model_validator(mode="after")
    def _data_mean_bias_needs_bernoulli_mlp(self) -> ModelConfig:
        if self.output_bias == "data-mean" and (self.likelihood != "bernoulli" or self.net != "mlp"):
            wrong = (f"the likelihood is {self.likelihood}" if self.likelihood != "bernoulli"
                     else f"the net is {self.net}, whose last layer has one bias per channel, not per pixel")
            raise InputError(f"output_bias = 'data-mean' sets a Bernoulli MLP decoder's per-pixel logits to the "
                             f"training mean, but {wrong}; use --likelihood bernoulli --net mlp, or remove it")
        return self

    @model_validator(mode="after")
    def _tables_are_tables(self) -> ModelConfig:
        for key, value in (self.__pydantic_extra__ or {}).items():
            if not isinstance(value, dict):
                # format_validation_error shows it as ``model.KEY: unknown option ... (got VALUE)``
                raise InputError(f"{key}{_NOT_A_TABLE}{', '.join(type(self).model_fields)}, and a family's options "
                                 f"as a [model.NAME] table{_GOT}{value!r}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _lambda_rec(cls, data: Any) -> Any:
        if isinstance(data, dict) and "lambda_rec" in data:
            data = dict(data)
            lam = data.pop("lambda_rec")
            if lam is None:
                return data
            if not isinstance(lam, int | float) or lam <= 0:
                raise InputError(f"lambda_rec must be a positive number (λ_rec = 1/σ²), got {lam!r}")
            var = 1.0 / float(lam)
            if data.get("recon_var") is not None and abs(float(data["recon_var"]) - var) > 1e-12 * var:
                raise InputError(
                    f"recon_var={data['recon_var']} and lambda_rec={lam} disagree (λ_rec = 1/σ²); give only one"
                )
            data["recon_var"] = var
        return data

    @property
    def lambda_rec(self) -> float:
        """λ_rec = 1/σ², the reconstruction weight: another name for ``recon_var``. Assigning
        it (``cfg.model.lambda_rec = 10``) sets ``recon_var`` = 1/λ_rec, as the constructor,
        TOML and ``--lambda-rec`` do."""
        return 1.0 / self.recon_var

    @lambda_rec.setter
    def lambda_rec(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigError(
                f"invalid configuration in the assignment model.lambda_rec = {value!r} (the config keeps "
                f"model.recon_var = {self.recon_var!r}):\n  model.lambda_rec: must be a positive number "
                f"(λ_rec = 1/σ²; e.g. lambda_rec = 10 sets recon_var = 0.1)")
        self.recon_var = 1.0 / float(value)

    @field_validator("hidden", "cond_embed", "channels")
    @classmethod
    def _positive_hidden(cls, value: list[int]) -> list[int]:
        if any(h <= 0 for h in value):
            raise InputError(f"every hidden layer size must be positive, got {value}")
        return value

    @property
    def family_tables(self) -> dict[str, dict[str, Any]]:
        """The ``[model.NAME]`` tables as given: {family name: {option: value}}, no defaults."""
        return {name: dict(table) for name, table in (self.__pydantic_extra__ or {}).items()}

    def family_options(self, schema: type[FamilyOptionsT]) -> FamilyOptionsT:
        """The options of this config's family (``kind``): its ``[model.KIND]`` table validated
        against ``schema``, the family's ``options`` class, with the defaults filled in.

        How a family reads its options, e.g. in ``__init__``:
        ``opts = config.family_options(TemperedOptions)``. Raises ConfigError for a bad table.
        """
        return parse_family_options(self.kind, self.family_tables.get(self.kind, {}), schema)


class TrainConfig(_Section):
    """Optimisation: Adam, an epoch or step budget, the objective and its weights.

    The defaults (with ModelConfig's 2x256 tanh MLPs and learned-variance decoder) were chosen by
    measurement (benchmarks/bench_toy2d.py): on radial_gmm the IWAE objective with k = 4 and a
    cosine-decayed learning rate of 3e-3 brings the held-out IWAE NLL within about 0.07 nats
    of the true entropy, where the same nets trained on the ELBO stop near 0.25; the width and
    the 250-epoch budget were then chosen by the worst gap over every exact-density data set
    at about the time of the former 2x128 x 400 epochs (docs/defaults-2d.md). Use
    ``objective = "elbo"`` for the classic VAE (its q(z|x) is then the tighter posterior fit
    that the ELBO rewards).
    """

    objective: str = Field("iwae", description="training objective (ae always uses reconstruction)")
    beta: float = Field(
        1.0, ge=0, description="weight β of the KL term (β-VAE); with iwae it weighs log q - log p in every log w_i"
    )
    k: int = Field(4, gt=0, description="importance samples of the IWAE objective")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")
    lr_schedule: Literal["constant", "cosine", "burda"] = Field(
        "cosine", description="learning rate over the step budget: constant, cosine decay to 0, or burda (Burda et "
        "al. 2016: 8 stages of 3^i epochs, i = 0..7, at lr · 10^(-i/7), 3,280 epochs in all)"
    )
    adam_betas: list[float] = Field(
        default_factory=lambda: [0.9, 0.999], description="Adam's β1, β2: the decay of its moment averages"
    )
    adam_eps: float = Field(1e-8, gt=0, allow_inf_nan=False, description="Adam's ε, added to the root of the "
                            "second moment")
    # 250 with the 2x256 nets: their steps cost ~1.8-2x those of 2x128, and 250 epochs keep the
    # banana gain (and most of pinwheel's) at ~1.2x the former 2x128 x 400-epoch time (docs/defaults-2d.md).
    epochs: int = Field(250, gt=0, description="passes over the training data")
    steps: int | None = Field(None, gt=0, description="optimizer steps; when set, replaces epochs as the budget")
    batch_size: int = Field(256, gt=0)
    seed: int = Field(0, description="seed of weight init, shuffling and sampling noise")
    checkpoint_every: int = Field(50, gt=0, description="save a checkpoint every N epochs (and at the end)")
    # 1024: the variance estimate's relative error is ~4 % (√(2/n)), enough to see a collapse, and the
    # per-epoch decode stays under 5 % of training on the default 2-D run (benchmarks/bench_fit_overhead.py)
    diversity_samples: int = Field(1024, gt=0, description="prior samples used for the diversity column")
    # Non-finite values and gradient clipping (vaelab.train.fit).
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="on a NaN/inf loss or gradient: stop (name the step and term), or skip the step "
        "and halve the learning rate (at most max_skips times)",
    )
    max_skips: int | None = Field(
        None, gt=0, description=f"steps nonfinite = skip may skip before training stops (unset: {DEFAULT_MAX_SKIPS})",
    )
    grad_clip: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="clip the gradient norm (over all parameters) to this value before each step; unset: off",
    )
    # KL schedules and free bits (vaelab.schedules.beta_at, vaelab.objectives.free_bits_kl; docs/objectives.md).
    beta_schedule: Literal["constant", "warmup", "cyclical"] = Field(
        "constant", description="β over the step budget: constant; warmup (linear from 0 over warmup_epochs or "
        "warmup_steps); cyclical (Fu et al. 2019: `cycles` ramps, each rising over `cycle_ratio` of its cycle)",
    )
    warmup_epochs: int | None = Field(None, gt=0, description="epochs over which β grows from 0 (beta_schedule warmup)")
    warmup_steps: int | None = Field(None, gt=0, description="steps over which β grows from 0 (beta_schedule warmup)")
    cycles: int = Field(4, gt=0, description="number M of annealing cycles over the budget (beta_schedule cyclical)")
    cycle_ratio: float = Field(
        0.5, gt=0, le=1, description="share R of each cycle over which β rises from 0 (beta_schedule cyclical)"
    )
    free_bits: float = Field(
        0.0, ge=0, description="free bits λ (nats): the ELBO's KL of each group is floored at λ, averaged over the "
        "batch (Kingma et al. 2016); 0: off",
    )
    free_bits_group: Literal["dim", "all", "layer"] = Field(
        "dim", description="what λ floors: the KL of each latent dimension (dim), the whole latent's KL (all), or "
        "the KL of each latent group (layer: the layers of a hierarchical model, e.g. --model ladder)"
    )
    compile: bool = Field(
        False, description="compile the training step with torch.compile (inductor): faster steps after a one-time "
        "compilation; the same noise draws, weights equal to eager up to float rounding",
    )

    @field_validator("epochs", "steps", "warmup_epochs", "warmup_steps")
    @classmethod
    def _budget_in_64_bits(cls, value: int | None) -> int | None:
        # The step counter is a 64-bit integer (torch, state.pt): a budget beyond it once started
        # a training that ran "forever" in silence (audit TC17, TR117, TR118).
        if value is not None and value > INT64_MAX:
            raise InputError(f"{value} is beyond the 64-bit integers a step count is kept in (at most {INT64_MAX}); "
                             "give a budget that training can finish")
        return value

    @field_validator("adam_betas")
    @classmethod
    def _two_betas_in_0_1(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or not all(0.0 <= b < 1.0 for b in value):
            raise InputError(f"adam_betas must be two numbers in [0, 1), β1 and β2 (e.g. 0.9,0.999), got {value}")
        return value

    @model_validator(mode="after")
    def _skips_need_the_skip_policy(self) -> TrainConfig:
        if self.max_skips is not None and self.nonfinite != "skip":
            raise InputError(f"max_skips = {self.max_skips} only applies with nonfinite = 'skip' "
                             "(--nonfinite skip); remove it or choose the skip policy")
        return self

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        # steps replaces epochs as the budget: an epoch count given beside it would be ignored (audit
        # AP42). A saved config.json lists both, epochs at its default: that is not a second budget.
        default = type(self).model_fields["epochs"].default
        if self.steps is not None and "epochs" in self.model_fields_set and self.epochs != default:
            raise InputError(f"epochs = {self.epochs} and steps = {self.steps} both give the training budget, and "
                             "steps replaces epochs: remove it, or steps (give only one of --epochs and --steps)")
        return self

    @model_validator(mode="after")
    def _one_warmup_length(self) -> TrainConfig:
        if self.warmup_epochs is not None and self.warmup_steps is not None:
            raise InputError(f"warmup_epochs = {self.warmup_epochs} and warmup_steps = {self.warmup_steps} both "
                             "give the warm-up length; give only one (--warmup-epochs or --warmup-steps)")
        if self.beta_schedule == "warmup" and self.warmup_epochs is None and self.warmup_steps is None:
            raise InputError("beta_schedule = 'warmup' needs its length: give --warmup-epochs N or "
                             "--warmup-steps N (warmup_epochs / warmup_steps in [train])")
        return self

    @property
    def skip_limit(self) -> int:
        """The number of steps the skip policy may skip: max_skips, or its documented default."""
        return DEFAULT_MAX_SKIPS if self.max_skips is None else self.max_skips

    _seed = field_validator("seed")(_check_seed)


class ScheduleSpec(_Section):
    """A named scalar over training (β, the learning rate, a family's temperature ...): which
    schedule of ``vaelab.schedules.SCHEDULES`` and its numbers. ``vaelab.schedules.value_at``
    turns it into the value at each optimizer step, a pure function of the step (exact resume).

    value: the constant, the target of a warm-up / cyclical ramp, or the start of a decay.
    end: where cosine and exponential decays arrive at the end of ``steps`` (default: the budget).
    steps: length of a warm-up or decay in steps (warm-up: required); burda: its unit, one epoch.
    cycles, ratio: the cyclical schedule (Fu et al. 2019).
    """

    kind: str = Field("constant", description="constant, warmup, cyclical, cosine, exponential or burda")
    value: float = Field(1.0, description="constant value, ramp target, or start of a decay")
    end: float = Field(0.0, description="value a cosine / exponential decay reaches")
    steps: int | None = Field(None, gt=0, description="steps of a warm-up or decay (default: the budget); burda: "
                              "steps of its first stage (one epoch)")
    cycles: int = Field(4, gt=0, description="cycles over the budget (cyclical)")
    ratio: float = Field(0.5, gt=0, le=1, description="share of each cycle spent rising (cyclical)")


class EvalConfig(_Section):
    """Held-out evaluation."""

    k: int = Field(1000, gt=0, description="importance samples of the IWAE log-likelihood estimate")
    batch_size: int = Field(500, gt=0, description="test points per evaluation batch")
    seed: int = Field(0, description="seed of the evaluation noise")

    _seed = field_validator("seed")(_check_seed)


class RunConfig(_Section):
    """Everything that defines a run; saved as config.json in the run directory."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, source)) from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: cannot read the run configuration ({err})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        """Read a TOML file with optional tables [data], [model], [train], [eval]."""
        return cls.from_dict(read_toml(path), str(path))

    def with_overrides(
        self, overrides: dict[str, Any], *, explicit: bool = True, source: str = "command-line options"
    ) -> RunConfig:
        """A new config with ``{"section": {"field": value}}`` applied; None values are skipped.

        Which fields the user set (each section's ``model_fields_set``) is kept: those of
        ``self``, plus the overridden ones when ``explicit`` (flags, a TOML file). A preset
        passes ``explicit=False``: its values are starting values, like the defaults, and
        never make ``settings.check_settings`` refuse a run.
        """
        data: dict[str, Any] = self.model_dump()
        user_set = {name: set(getattr(self, name).model_fields_set) for name in SECTIONS}
        for section, values in overrides.items():
            if section not in SECTIONS or not isinstance(values, dict):
                data[section] = values  # reported by validation: unknown table / not a table
                continue
            if values.get("lambda_rec") is not None and values.get("recon_var") is None:
                data[section].pop("recon_var", None)  # λ_rec replaces the previous σ²
            if section == "train":
                # A budget given here replaces the budget of the layer below (a preset's or the
                # --config file's epochs under --steps, and the other way round); both in one
                # layer are refused by TrainConfig (audit AP42).
                for given, other in (("steps", "epochs"), ("epochs", "steps")):
                    if values.get(given) is not None and values.get(other) is None:
                        data[section][other] = TrainConfig.model_fields[other].default
                        user_set[section].discard(other)
            for key, value in values.items():
                if value is None:
                    continue
                if section == "model" and isinstance(value, dict) and key not in ModelConfig.model_fields:
                    # A [model.NAME] table: its options are laid over those given before (a flag
                    # over the --config file's table), each one given as a key of the table.
                    value = {**data[section].get(key, {}), **{k: v for k, v in value.items() if v is not None}}
                data[section][key] = value
                if explicit:
                    user_set[section].add("recon_var" if key == "lambda_rec" else key)
        config = RunConfig.from_dict(data, source)
        for name in SECTIONS:
            section_cfg = getattr(config, name)
            # pydantic's own record of the fields given at construction (what model_construct sets).
            section_cfg.__pydantic_fields_set__ = user_set[name] & set(type(section_cfg).model_fields)
        return config

    def user_settings(self) -> list[str]:
        """The dotted names (``model.hidden``) of the fields set explicitly by the user, then
        those of the family options given (``model.tempered.tau_end``: every key of a
        ``[model.NAME]`` table was given, as the table holds no defaults)."""
        fields = [f"{name}.{field}" for name in SECTIONS for field in sorted(getattr(self, name).model_fields_set)
                  if field in type(getattr(self, name)).model_fields]
        options = [f"model.{family}.{key}" if key else f"model.{family}"  # an empty table: the table itself
                   for family, table in self.model.family_tables.items() for key in (table or [""])]
        return fields + options


SECTIONS = ("data", "model", "train", "eval")


def _section_name(cls: type[BaseModel]) -> str:
    """How a table is named in messages: ``train`` for TrainConfig, nothing for the whole
    RunConfig; a family's options class or a schedule by its class name."""
    names: dict[type[BaseModel], str] = {RunConfig: "", DataConfig: "data", ModelConfig: "model",
                                         TrainConfig: "train", EvalConfig: "eval"}
    return next((name for base, name in names.items() if issubclass(cls, base)), cls.__name__)


def _section_errors(cls: type[BaseModel], err: ValidationError, header: str) -> str:
    """``header`` and one line per error of a table's constructor or assignment:
    ``train.epochs: Input should be greater than 0 (got -1)``; an unknown option is named with
    the ones the table takes (and the nearest of them)."""
    if cls is RunConfig:  # its errors are located from the top: the file reader's format applies
        return format_validation_error(err, header.removeprefix("invalid configuration in "))
    section = _section_name(cls)
    fields = list(cls.model_fields)
    lines = [header + ":"]
    for e in err.errors():
        where = ".".join([section, *(str(p) for p in e["loc"])])
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        if e["type"] in ("extra_forbidden", "no_such_attribute") and e["loc"]:
            key = str(e["loc"][-1])
        elif _NOT_A_TABLE in msg:  # a key of [model] that is no field (and not a family's table)
            key, rest = msg.split(_NOT_A_TABLE, 1)
            where = f"{section}.{key}"
            msg = f"unknown option; [{section}] takes {rest.split(_GOT, 1)[0]}"
        else:
            key = ""
        if key and not msg.startswith("unknown option"):
            msg = f"unknown option; [{section}] takes {', '.join(fields)}"
        near = difflib.get_close_matches(key, fields, n=1) if key else []
        if near:
            msg += f"; did you mean {near[0]}?"
        shown = f" (got {got!r})" if not key and got is not None and not isinstance(got, dict | BaseModel) else ""
        lines.append(f"  {where}: {msg}{shown}")
    return "\n".join(lines)


def absolute_path(path: str | Path) -> str:
    """``path`` made absolute (``~`` expanded, symbolic links resolved where they can be): how
    vaelab stores a data path, so a run can be evaluated from any folder. A symbolic link loop
    is kept as written (made absolute) for the data reader to name, not a traceback."""
    expanded = Path(path).expanduser()
    try:
        return str(expanded.resolve())
    except (RuntimeError, OSError):  # "Symlink loop from ..." (RuntimeError before Python 3.13)
        return os.path.abspath(expanded)


# [data] keys that name a file or folder: relative ones are taken from the config file's folder.
_PATH_KEYS = ("path", "data_dir")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML config file; a ConfigError naming the file if it cannot be read or parsed.

    A relative path in its [data] table (``path``, ``data_dir``) is relative to the config file's
    folder, as in most tools, not to the folder vaelab runs in (audit TC12): a config file and
    its data can be moved together."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors): invisible, harmless
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{raw[err.start]:02x} at position {err.start}), so "
                          "not a TOML config; TOML files must be saved as UTF-8") from None
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    data = tables.get("data")
    if isinstance(data, dict):
        for key in _PATH_KEYS:
            value = data.get(key)
            if isinstance(value, list):  # a sweep file's list of values
                data[key] = [_beside(path, v) for v in value]
            elif value is not None:
                data[key] = _beside(path, value)
    return tables


def _beside(config_file: Path, value: Any) -> Any:
    """A path written in ``config_file``, taken from that file's folder when it is relative."""
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    return str(config_file.parent / value)

# Fields whose command-line flag is not simply ``--`` + the field name with dashes.
_FLAGS = {
    "data.name": "--data", "data.path": "--data", "data.seed": "--data-seed", "model.kind": "--model",
    "eval.k": "--eval-k",
}
# Fields that `vaelab train` sets only through a --config file.
_NO_FLAG = {"train.diversity_samples", "eval.batch_size", "eval.seed"}


def family_setting(dotted: str) -> tuple[str, str] | None:
    """(family, option) of a family's option ``model.NAME.FIELD`` (option "" for the table
    ``model.NAME`` itself); None for a field of a section (``model.hidden``)."""
    section, _, rest = dotted.partition(".")
    family, _, option = rest.partition(".")
    if section != "model" or (not option and (family in ModelConfig.model_fields or family == "lambda_rec")):
        return None
    return family, option


def family_flag(family: str, option: str) -> str:
    """The flag of a family's option: ``--NAME-FIELD`` (``tempered``, ``tau_end`` -> ``--tempered-tau-end``)."""
    return f"--{family}-{option}".replace("_", "-")


def flag_name(dotted: str) -> str:
    """How a field is named for the user: ``model.latent_dim (--latent-dim)``; a family's
    option ``model.tempered.tau_end (--tempered-tau-end)``."""
    section, field = dotted.split(".", 1)
    family = family_setting(dotted)
    if family is not None:
        name, option = family
        return f"{dotted} ({family_flag(name, option) if option else f'[model.{name}] or --{name}-* flags'})"
    if dotted in _NO_FLAG:
        return f"{dotted} ([{section}] {field} in --config)"
    return f"{dotted} ({_FLAGS.get(dotted, '--' + field.replace('_', '-'))})"


def cli_flag(dotted: str) -> str | None:
    """The command-line flag that sets a field (``model.latent_dim`` -> ``--latent-dim``), or
    None for a field set only through a --config file. A family option ``model.NAME.FIELD``
    has ``--NAME-FIELD`` (whether its type can be a flag is up to the caller)."""
    family = family_setting(dotted)
    if family is not None:
        return family_flag(*family) if family[1] else None
    if dotted in _NO_FLAG:
        return None
    return _FLAGS.get(dotted, "--" + dotted.split(".", 1)[1].replace("_", "-"))


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per bad field: ``section.field: message (got value)``."""
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1 and not isinstance(e.get("input"), dict):
            # ``epochs = 2`` above every table: a key outside any table, not a table (audit TC22).
            owner = next((name for name in SECTIONS
                          if loc in RunConfig.model_fields[name].annotation.model_fields), None)  # type: ignore[union-attr]
            where = f"put it under [{owner}]" if owner else \
                f"keys belong in one of the tables {', '.join(f'[{name}]' for name in SECTIONS)}"
            lines.append(f"  {loc} = {e['input']!r} is outside any table; {where}")
            continue
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
            msg = f"unknown table [{loc}]; the tables are {', '.join(f'[{name}]' for name in SECTIONS)}"
        elif e["type"] == "extra_forbidden":
            section = str(e["loc"][0])
            known = ", ".join(RunConfig.model_fields[section].annotation.model_fields)  # type: ignore[union-attr]
            msg = f"unknown option; [{section}] takes {known}"
        elif tuple(e["loc"]) == ("model",) and _NOT_A_TABLE in msg:
            # A key of [model] that is no field is read as a family's [model.NAME] table.
            key, msg = msg.split(_NOT_A_TABLE, 1)
            msg, value = msg.split(_GOT, 1)
            lines.append(f"  model.{key}: unknown option; [model] takes {msg} (got {value})")
            continue
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"  {loc}: {msg}{got}")
    return "\n".join(lines)
