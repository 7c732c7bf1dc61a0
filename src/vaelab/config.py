"""Validated run configuration: data / model / train / eval, from defaults, TOML and CLI flags.

The configuration is the single source of truth of a run: it is saved as ``config.json`` in
the run directory and is enough, with the weights, to rebuild the model.

Precedence: defaults < ``--config file.toml`` < explicit command-line flags.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vaelab.errors import InputError

Activation = Literal["relu", "silu", "tanh", "elu", "leaky_relu", "gelu", "softplus"]
ScaleParam = Literal["logvar", "softplus", "exp"]
LikelihoodName = Literal["gaussian", "gaussian-learned", "bernoulli"]
NetName = Literal["mlp", "conv"]
ImageSplit = Literal["official", "test-9k"]
BinarizeName = Literal["auto", "none", "dynamic", "fixed"]


# Steps that ``nonfinite = "skip"`` may skip when max_skips is not given.
DEFAULT_MAX_SKIPS = 10


class ConfigError(InputError):
    """A configuration value is invalid; the message names the field and what is allowed."""


# Seeds feed torch.Generator.manual_seed, which takes 64-bit values; derived seeds (the test
# split's offset, per-epoch seeds) stay inside 64 bits for every seed of this range.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


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


class _Section(BaseModel):
    # strict: a TOML ``epochs = true`` or ``lr = "1e-3"`` is refused, not read as 1 epoch /
    # coerced; an int is still accepted for a float field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

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
    # Images (see vaelab.data.images and vaelab.data.pixels).
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

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        from vaelab.data.registry import DATASETS

        if value not in DATASETS:
            raise InputError(f"unknown dataset {value!r}; choose one of: {', '.join(DATASETS)}")
        return value

    @field_validator("condition")
    @classmethod
    def _known_condition(cls, value: str | None) -> str | None:
        from vaelab.conditions import parse_kind

        return None if value is None else parse_kind(value)[0]

    @property
    def condition_columns(self) -> list[str]:
        """CSV columns named by ``condition = "column:NAME,..."``: held out of x as condition."""
        from vaelab.conditions import parse_kind

        return [] if self.condition is None else parse_kind(self.condition)[1]


class ModelConfig(_Section):
    """Architecture of the encoder / decoder and the likelihood p(x|z).

    ``recon_var`` is σ² of a fixed-variance Gaussian likelihood. Its inverse λ_rec = 1/σ²
    is the "reconstruction weight" of course material: -log p(x|z) = λ_rec/2 ‖x - μ(z)‖²
    + const, so raising λ_rec is the same knob as lowering σ². Give either name, not both
    with different values.
    """

    kind: str = Field("vae", description="model family (vaelab.models.FAMILIES): vae, or ae (autoencoder baseline)")
    net: NetName = Field("mlp", description="encoder/decoder body: mlp, or conv (square images; ignores hidden)")
    channels: list[int] = Field(
        default_factory=lambda: [8, 16, 32], description="channels of the stride-2 convolutions (net=conv)"
    )
    hidden: list[int] = Field(default_factory=lambda: [128, 128], description="hidden layer sizes of each MLP")
    activation: Activation = "tanh"
    latent_dim: int = Field(2, gt=0, description="dimension of z")
    scale: ScaleParam = Field("logvar", description="encoder scale parameterisation")
    likelihood: LikelihoodName = "gaussian-learned"
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

    @field_validator("hidden", "cond_embed", "channels")
    @classmethod
    def _positive_hidden(cls, value: list[int]) -> list[int]:
        if any(h <= 0 for h in value):
            raise InputError(f"every hidden layer size must be positive, got {value}")
        return value


class TrainConfig(_Section):
    """Optimisation: Adam, an epoch or step budget, the objective and its weights.

    The defaults (with ModelConfig's tanh MLPs and learned-variance decoder) were chosen by
    measurement on radial_gmm (benchmarks/bench_toy2d.py): the IWAE objective with k = 4
    and a cosine-decayed learning rate of 3e-3 brings the held-out IWAE NLL within about
    0.07 nats of the true entropy in ~16 s of CPU training, where the same nets trained on
    the ELBO stop near 0.25. Use ``objective = "elbo"`` for the classic VAE (its q(z|x)
    is then the tighter posterior fit that the ELBO rewards).
    """

    objective: Literal["elbo", "iwae"] = Field("iwae", description="training objective (ae always uses reconstruction)")
    beta: float = Field(
        1.0, ge=0, description="weight β of the KL term (β-VAE); with iwae it weighs log q - log p in every log w_i"
    )
    k: int = Field(4, gt=0, description="importance samples of the IWAE objective")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning rate over the step budget: constant, or cosine decay to 0"
    )
    epochs: int = Field(400, gt=0, description="passes over the training data")
    steps: int | None = Field(None, gt=0, description="optimizer steps; when set, replaces epochs as the budget")
    batch_size: int = Field(256, gt=0)
    seed: int = Field(0, description="seed of weight init, shuffling and sampling noise")
    checkpoint_every: int = Field(50, gt=0, description="save a checkpoint every N epochs (and at the end)")
    diversity_samples: int = Field(2048, gt=0, description="prior samples used for the diversity column")
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

    @model_validator(mode="after")
    def _skips_need_the_skip_policy(self) -> TrainConfig:
        if self.max_skips is not None and self.nonfinite != "skip":
            raise InputError(f"max_skips = {self.max_skips} only applies with nonfinite = 'skip' "
                             "(--nonfinite skip); remove it or choose the skip policy")
        return self

    @property
    def skip_limit(self) -> int:
        """The number of steps the skip policy may skip: max_skips, or its documented default."""
        return DEFAULT_MAX_SKIPS if self.max_skips is None else self.max_skips

    _seed = field_validator("seed")(_check_seed)


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
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the config file ({err})") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
        return cls.from_dict(data, str(path))

    def with_overrides(
        self, overrides: dict[str, Any], *, explicit: bool = True, source: str = "command-line options"
    ) -> RunConfig:
        """A new config with ``{"section": {"field": value}}`` applied; None values are skipped.

        Which fields the user set (each section's ``model_fields_set``) is kept: those of
        ``self``, plus the overridden ones when ``explicit`` (flags, a TOML file). A preset
        passes ``explicit=False``: its values are starting values, like the defaults, and
        never make ``check_settings`` refuse a run.
        """
        data: dict[str, Any] = self.model_dump()
        user_set = {name: set(getattr(self, name).model_fields_set) for name in SECTIONS}
        for section, values in overrides.items():
            if section not in SECTIONS or not isinstance(values, dict):
                data[section] = values  # reported by validation: unknown table / not a table
                continue
            if values.get("lambda_rec") is not None and values.get("recon_var") is None:
                data[section].pop("recon_var", None)  # λ_rec replaces the previous σ²
            for key, value in values.items():
                if value is None:
                    continue
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
        """The dotted names (``model.hidden``) of the fields set explicitly by the user."""
        return [f"{name}.{field}" for name in SECTIONS for field in sorted(getattr(self, name).model_fields_set)]


SECTIONS = ("data", "model", "train", "eval")

# Fields whose command-line flag is not simply ``--`` + the field name with dashes.
_FLAGS = {
    "data.name": "--data", "data.path": "--data", "data.seed": "--data-seed", "model.kind": "--model",
    "eval.k": "--eval-k",
}
# Fields that `vaelab train` sets only through a --config file.
_NO_FLAG = {"train.diversity_samples", "eval.batch_size", "eval.seed"}


def flag_name(dotted: str) -> str:
    """How a field is named for the user: ``model.latent_dim (--latent-dim)``."""
    section, field = dotted.split(".", 1)
    if dotted in _NO_FLAG:
        return f"{dotted} ([{section}] {field} in --config)"
    return f"{dotted} ({_FLAGS.get(dotted, '--' + field.replace('_', '-'))})"


def _data_kind(config: RunConfig) -> str:
    """toy, file (a table of points), folder (images), digits or mnist (downloaded image sets)."""
    from vaelab.data.registry import DATASETS

    if config.data.path is not None:
        return "folder" if Path(config.data.path).expanduser().is_dir() else "file"
    if config.data.name in ("digits", "digits8"):
        return "digits"
    return "mnist" if DATASETS[config.data.name].kind == "image" else "toy"


def _continuous_condition(config: RunConfig) -> bool:
    from vaelab.conditions import parse_kind

    return config.data.condition is not None and parse_kind(config.data.condition)[0] != "label"


def _data_name(config: RunConfig) -> str:
    return config.data.path or config.data.name


# One rule per field: None where the setting changes what is trained / evaluated, else why
# it would not and what to use instead. check_settings applies the rule of every field the
# user set; tests/test_settings.py checks that every field has a rule and that each rule is right.
_Rule = Callable[["RunConfig"], "str | None"]


def _always(config: RunConfig) -> str | None:
    return None


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
    "model.channels": lambda c: None if c.model.net == "conv" else "it sets the conv nets' channels; add --net conv "
    "or set --hidden for the MLP",
    "model.hidden": lambda c: None if c.model.net == "mlp" else "conv nets have no hidden MLP layers; use --channels "
    "(or --net mlp)",
    "model.activation": _always,
    "model.latent_dim": _always,
    "model.scale": lambda c: None if c.model.kind == "vae" else "an autoencoder has no encoder scale; drop it or "
    "use --model vae",
    "model.likelihood": _always,
    "model.recon_var": lambda c: None if c.model.likelihood == "gaussian" else (
        f"it is σ² (λ_rec = 1/σ²) of the fixed-variance gaussian likelihood, but the likelihood is "
        f"{c.model.likelihood}; use --likelihood gaussian" + (
            ", or --min-var to bound the learned variance" if c.model.likelihood == "gaussian-learned" else "")),
    "model.cond_embed": lambda c: None if _continuous_condition(c) else (
        "it embeds a continuous condition (radius or column:NAME), but "
        + ("there is no condition" if c.data.condition is None else "labels are one-hot encoded")
        + "; drop it"),
    "model.min_var": lambda c: None if c.model.likelihood == "gaussian-learned" else (
        f"it floors the learned variance of gaussian-learned, but the likelihood is {c.model.likelihood}"
        + ("; use --recon-var for the fixed σ²" if c.model.likelihood == "gaussian" else "; drop it")),
    "train.objective": lambda c: None if c.model.kind == "vae" else "an autoencoder always trains on the "
    "reconstruction; drop it or use --model vae",
    "train.beta": lambda c: None if c.model.kind == "vae" else "an autoencoder has no KL term to weight; drop it "
    "or use --model vae",
    "train.k": lambda c: None if c.model.kind == "vae" and c.train.objective == "iwae" else (
        "an autoencoder draws no samples; drop it or use --model vae" if c.model.kind != "vae"
        else "the ELBO uses one sample; use --objective iwae for k importance samples"),
    "train.lr": _always,
    "train.lr_schedule": _always,
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
    "eval.k": lambda c: None if c.model.kind == "vae" else "an autoencoder has no likelihood bound to estimate; "
    "drop it or use --model vae",
    "eval.batch_size": _always,
    "eval.seed": lambda c: None if c.model.kind == "vae" or c.data.condition is not None else (
        "the evaluation of an unconditional autoencoder draws no noise; drop it"),
}


def check_settings(config: RunConfig) -> None:
    """Refuse a config in which a setting the user gave would change nothing.

    Only the fields in each section's ``model_fields_set`` are checked (flags, a TOML file,
    keyword arguments), so defaults and presets never trigger a refusal.

    Raises:
        ConfigError: one line per setting that does not apply, saying why and what to use.
    """
    problems = []
    for dotted in config.user_settings():
        rule = SETTING_RULES.get(dotted)
        if rule is None:
            raise ConfigError(f"{dotted}: no applicability rule (add one to vaelab.config.SETTING_RULES)")
        why = rule(config)
        if why is not None:
            problems.append(f"  {flag_name(dotted)} does not apply here: {why}")
    if problems:
        raise ConfigError("settings that would change nothing:\n" + "\n".join(problems))


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per bad field: ``section.field: message (got value)``."""
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
            msg = f"unknown table [{loc}]; the tables are {', '.join(f'[{name}]' for name in SECTIONS)}"
        elif e["type"] == "extra_forbidden":
            section = str(e["loc"][0])
            known = ", ".join(RunConfig.model_fields[section].annotation.model_fields)  # type: ignore[union-attr]
            msg = f"unknown option; [{section}] takes {known}"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"  {loc}: {msg}{got}")
    return "\n".join(lines)
