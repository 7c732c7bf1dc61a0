"""The grid of a sweep: lists of values for train / model settings, expanded into member configs.

A sweep is the course's "try several values and compare" as one command. Its grid comes from
command-line flags given as comma lists (``--beta 0.25,0.5,1 --latent-dim 1,2 --seeds 3``: any
``vaelab train`` flag) or from a ``[sweep]`` table in the TOML config::

    [sweep]
    seeds = 3                 # train.seed = seed, seed + 1, seed + 2
    [sweep.train]
    beta = [0.25, 0.5, 1]
    [sweep.model]
    lambda_rec = [1, 10]      # λ_rec = 1/σ², the same knob as recon_var
    hidden = [[64], [128, 128]]
    [sweep.model.tempered]    # a family's own options (--model tempered --tempered-tau-end 0.5,1)
    tau_end = [0.5, 1.0]

Flags take precedence over the table, as everywhere. A setting given one value applies to
every member; one given several values is an axis of the grid, and the members are every
combination of the axes. Every value is checked before anything is trained or written, with
errors that name the setting and the value: alone against the base config first, then each
member as a whole with ``vaelab.settings.check_settings`` (a value that would change nothing
for a member is refused like a flag of ``vaelab train``).
"""

from __future__ import annotations

import itertools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab.config import SECTIONS, ConfigError, ModelConfig, RunConfig, cli_flag, read_toml
from vaelab.errors import InputError
from vaelab.models import option_schemas


class GridError(InputError):
    """A grid value or a sweep option is refused; the message names the setting and the value."""


# Settings of every member: they define the data the stack shares, or how runs are evaluated.
# A single value is fine (it applies to every member); several values are refused.
_SHARED_SECTIONS = {
    "data": "every member of a sweep trains on the same data; run one sweep per data setting",
    "eval": "every member of a sweep is evaluated the same way; give one value (re-evaluate a member "
            "with `vaelab eval RUN --k N` for another)",
}
# λ_rec is no field but a second name of recon_var (see ModelConfig).
_ALIASES = {"model.lambda_rec": "--lambda-rec"}
# `vaelab train` options that a sweep does not take, and what to use instead.
_NOT_SWEEP_OPTIONS = {
    "--overwrite": "a sweep never replaces a folder: choose a new --out, or --resume to continue one",
    "--no-eval": "a sweep evaluates every member for its metrics table: there is no --no-eval",
    "--no-report": "a sweep writes sweep.html from the members; each member's report: `vaelab report RUN`",
    "--seeds": "give --seeds once, as one number (N seeds: seed, seed + 1, ... seed + N - 1)",
}


def flag_table() -> dict[str, str]:
    """Every settable flag -> its dotted field (``--latent-dim`` -> ``model.latent_dim``).

    Then the options of every registered family that declares some (vaelab.models.option_schemas):
    ``--tempered-tau-end`` -> ``model.tempered.tau_end``, for each option whose type a flag can
    give (``has_flag``); ``vaelab train`` reads these flags from this table too.
    ``--data`` (a dataset name or a file) is an option of the sweep command itself."""
    table: dict[str, str] = {}
    for section in SECTIONS:
        cls = RunConfig.model_fields[section].annotation
        for field in cls.model_fields:  # type: ignore[union-attr]
            dotted = f"{section}.{field}"
            flag = cli_flag(dotted)
            if flag is not None and flag != "--data":
                table[flag] = dotted
    for dotted, flag in _ALIASES.items():
        table[flag] = dotted
    for name, schema in option_schemas().items():
        for option in schema.model_fields:
            dotted = f"model.{name}.{option}"
            flag = cli_flag(dotted)
            if flag is None or not has_flag(dotted):
                continue
            if flag in table or flag in _NOT_SWEEP_OPTIONS:
                raise InputError(f"the option {option!r} of the {name} family would take the flag {flag}, which is "
                                 f"already {table.get(flag, 'an option of vaelab train')}; rename the option")
            table[flag] = dotted
    return table


def _annotation(dotted: str) -> Any:
    section, field = dotted.split(".", 1)
    if dotted == "model.lambda_rec":
        return float
    if section == "model" and "." in field:  # a family's option: model.NAME.FIELD
        name, option = field.split(".", 1)
        return option_schemas()[name].model_fields[option].annotation
    cls = RunConfig.model_fields[section].annotation
    return cls.model_fields[field].annotation  # type: ignore[union-attr]


def has_flag(dotted: str) -> bool:
    """Whether a command-line word can give the setting's value: a number, a string, a bool
    (true / false) or a list of integers (64,64) or numbers (0.9,0.999); a nested table is set in TOML only."""
    annotation = _annotation(dotted)
    kinds = _kinds(annotation)
    if list in kinds:
        return all(typing.get_args(a) in ((int,), (float,)) for a in _lists(annotation))
    return all(k in (int, float, str, bool) for k in kinds)


def _element(dotted: str) -> type:
    """The type of a list-valued setting's elements: int (hidden, channels) or float (adam_betas)."""
    lists = _lists(_annotation(dotted))
    return typing.get_args(lists[0])[0] if lists else int


def _lists(annotation: Any) -> list[Any]:
    """The list types among a field's alternatives (``list[int] | None`` -> [list[int]])."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if typing.get_origin(a) is list]
    return [annotation] if typing.get_origin(annotation) is list else []


def _kinds(annotation: Any) -> tuple[type, ...]:
    """The Python types a field's value may take (Optional unwrapped; a Literal is a str)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(k for a in typing.get_args(annotation) if a is not type(None) for k in _kinds(a))
    if origin is typing.Literal:
        return (str,)
    if origin is list:
        return (list,)
    return (annotation,)


def parse_value(flag: str, dotted: str, token: str) -> Any:
    """One command-line value as the field's type: ``"0.5"`` -> 0.5, ``"64,64"`` -> [64, 64],
    ``"true"`` -> True."""
    kinds = _kinds(_annotation(dotted))
    if bool in kinds:
        if token.strip().lower() in ("true", "false"):
            return token.strip().lower() == "true"
        raise GridError(f"{flag}: {token!r} is not true or false")
    try:
        if list in kinds:  # hidden / channels / cond_embed / adam_betas: one alternative is itself a list
            element = _element(dotted)
            return [element(v) for v in token.split(",") if v.strip()] if token.strip() else []
        if int in kinds:
            return int(token)
        if float in kinds:
            return float(token)
    except ValueError:
        elements = "integers" if list in kinds and _element(dotted) is int else "numbers"
        what = (f"{elements} separated by commas (an alternative)" if list in kinds
                else "an integer" if int in kinds else "a number")
        raise GridError(f"{flag}: {token!r} is not {what}") from None
    return token


def _split(flag: str, dotted: str, text: str) -> list[Any]:
    """The alternatives of one flag. Scalars are separated by commas (``--beta 0.5,1,2``);
    list-valued settings by ``/`` (``--hidden 64,64/128,128``), as a comma is inside a value."""
    separator = "/" if list in _kinds(_annotation(dotted)) else ","
    tokens = [t.strip() for t in text.split(separator)]
    if not text.strip() or any(not t for t in tokens):
        example = "64,64/128,128" if separator == "/" else "0.5,1,2"
        raise GridError(f"{flag}: {text!r} has an empty value; give the values separated by "
                        f"{separator!r}, like {flag} {example}")
    return [parse_value(flag, dotted, t) for t in tokens]


def parse_flags(args: Sequence[str]) -> dict[str, list[Any]]:
    """Read ``--flag V1,V2 ...`` command-line words into ``{dotted setting: [values]}``.

    Each flag is any ``vaelab train`` flag (``--beta``, ``--recon-var``, ``--lambda-rec``,
    ``--latent-dim``, ``--lr``, ``--seed`` ...), given once, as ``--flag VALUES`` or
    ``--flag=VALUES``. Raises GridError for an unknown flag, a missing or empty value, a
    value of the wrong type, or a flag given twice.
    """
    table = flag_table()
    lists: dict[str, list[Any]] = {}
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        flag, has_value, text = word.partition("=")
        if not flag.startswith("--"):
            raise GridError(f"unexpected argument {word!r}: give settings as --flag VALUES, like --beta 0.5,1,2")
        if flag in _NOT_SWEEP_OPTIONS:
            raise GridError(f"{flag}: {_NOT_SWEEP_OPTIONS[flag]}")
        if flag not in table:
            raise GridError(f"{flag}: no such setting; a sweep takes the flags of `vaelab train` (see "
                            "`vaelab train --help`) as comma lists, plus --seeds N")
        if not has_value:
            if i + 1 >= len(words):
                raise GridError(f"{flag} needs its values, like {flag} 0.5,1,2")
            i += 1
            text = words[i]
        dotted = table[flag]
        if dotted in lists:
            raise GridError(f"{flag} is given twice; give all its values once, separated by commas")
        lists[dotted] = _split(flag, dotted, text)
        i += 1
    return lists


def read_sweep_toml(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML config: (its run tables, its ``[sweep]`` table or {})."""
    raw = read_toml(path)
    table = raw.pop("sweep", {})
    if not isinstance(table, dict):
        raise GridError(f"{path}: sweep must be a table ([sweep]), got {table!r}")
    return raw, table


def sweep_table(table: Mapping[str, Any], source: str = "[sweep]") -> tuple[dict[str, list[Any]], int | None]:
    """A ``[sweep]`` table -> ({dotted setting: [values]}, seeds).

    It holds ``seeds = N`` and sub-tables ``[sweep.model]`` / ``[sweep.train]`` (...) whose keys
    are the fields of those tables, each with a list of values; ``[sweep.model.NAME]`` holds
    lists of values of the options of the family NAME (``model.NAME.FIELD``)."""
    lists: dict[str, list[Any]] = {}
    seeds = None
    for key, value in table.items():
        if key == "seeds":
            seeds = value
            continue
        if key not in SECTIONS or not isinstance(value, dict):
            raise GridError(f"{source}: unknown key {key!r}; [sweep] holds seeds = N and the tables "
                            + ", ".join(f"[sweep.{s}]" for s in SECTIONS) + " of value lists")
        cls = RunConfig.model_fields[key].annotation
        for field, values in value.items():
            dotted = f"{key}.{field}"
            if key == "model" and isinstance(values, dict) and field not in ModelConfig.model_fields:
                # [sweep.model.NAME]: a family's options, checked with the members (check_settings)
                for option, option_values in values.items():
                    if not isinstance(option_values, list):
                        raise GridError(f"{source}: {dotted}.{option} = {option_values!r} must be a list of values, "
                                        f"like [0.5, 1, 2]; a single value belongs in the [model.{field}] table")
                    lists[f"{dotted}.{option}"] = option_values
                continue
            if field not in cls.model_fields and dotted not in _ALIASES:  # type: ignore[union-attr]
                raise GridError(f"{source}: {dotted} is no setting; [sweep.{key}] takes "
                                + ", ".join(cls.model_fields))  # type: ignore[union-attr]
            if not isinstance(values, list):
                raise GridError(f"{source}: {dotted} = {values!r} must be a list of values, like [0.5, 1, 2]; a "
                                f"single value belongs in the [{key}] table")
            lists[dotted] = values
    return lists, seeds


@dataclass(frozen=True)
class Axis:
    """One swept setting: its dotted name (``train.beta``) and its values, in the order given."""

    dotted: str
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        """The field's own name (``beta``): member names, table columns, figure labels."""
        return self.dotted.split(".", 1)[1]


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep; its members are every combination of their values."""

    axes: tuple[Axis, ...]

    @property
    def size(self) -> int:
        return math.prod(len(a.values) for a in self.axes)

    def to_dict(self) -> dict[str, list[Any]]:
        return {a.dotted: list(a.values) for a in self.axes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Any]]) -> Grid:
        return cls(tuple(Axis(k, tuple(v)) for k, v in data.items()))


@dataclass(frozen=True)
class Member:
    """One configuration of the grid: its name (its run directory), swept values, full config."""

    name: str
    values: dict[str, Any]  # dotted setting -> value
    config: RunConfig


def _label(dotted: str) -> str:
    flag = cli_flag(dotted) if dotted not in _ALIASES else _ALIASES[dotted]
    return f"{dotted} ({flag})" if flag else dotted


def _override(base: RunConfig, values: Mapping[str, Any], source: str) -> RunConfig:
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        section, field = dotted.split(".", 1)
        name, _, option = field.partition(".")
        if option:  # a family's option model.NAME.FIELD: a key of the [model.NAME] table
            sections.setdefault(section, {}).setdefault(name, {})[option] = value
        else:
            sections.setdefault(section, {})[field] = value
    return base.with_overrides(sections, source=source)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (isinstance(a, int | float) and isinstance(b, int | float) and a == b)


def make_grid(
    base: RunConfig, lists: Mapping[str, Sequence[Any]], *, seeds: int | None = None
) -> tuple[RunConfig, Grid]:
    """Split the given settings into the base every member shares and the axes of the grid.

    ``lists``: {dotted setting: values}; a single value is applied to ``base``. ``seeds`` N
    adds the axis train.seed = s, s + 1, ..., s + N − 1 from the base's seed s. Every value is
    validated alone against the base here (errors name the setting and the value); the
    members as a whole are checked by :func:`expand`. Nothing is read or written.
    """
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise GridError(f"--seeds (seeds in [sweep]) is the number of seeds, a positive integer; got {seeds!r}")
        if "train.seed" in lists:
            raise GridError("--seeds N and a list of --seed values both give the seeds; give only one")
    if "model.lambda_rec" in lists and "model.recon_var" in lists:
        raise GridError("--recon-var and --lambda-rec are the same knob (λ_rec = 1/σ²); sweep only one of them")
    shared = {d: list(v)[0] for d, v in lists.items() if len(v) == 1}
    try:
        base = _override(base, shared, "the sweep's single values") if shared else base
    except ConfigError as err:
        raise GridError(str(err)) from None
    axes = []
    for dotted, values in lists.items():
        values = list(values)
        if len(values) == 0:
            raise GridError(f"{_label(dotted)}: the list of values is empty; give at least one")
        if len(values) == 1:
            continue
        section = dotted.split(".", 1)[0]
        if section in _SHARED_SECTIONS:
            raise GridError(f"{_label(dotted)}: several values {values} are refused: {_SHARED_SECTIONS[section]}")
        for i, value in enumerate(values):
            if any(_same(value, other) for other in values[:i]):
                raise GridError(f"{_label(dotted)}: the value {value!r} is given twice; each value makes one "
                                "member, give it once")
            try:
                _override(base, {dotted: value}, "the sweep's values")
            except ConfigError as err:
                raise GridError(f"{_label(dotted)}: the value {value!r} is refused: {err}") from None
        axes.append(Axis(dotted, tuple(values)))
    # The size is checked before the seed axis is built: --seeds 10^8 once took 4.6 GB (audit SW07).
    n_seeds = seeds if seeds is not None and seeds > 1 else 1
    size = math.prod(len(a.values) for a in axes) * n_seeds
    if size > MAX_MEMBERS:
        words = " × ".join([*(f"{len(a.values)} values of {_label(a.dotted)}" for a in axes),
                            *([f"--seeds {seeds}"] if n_seeds > 1 else [])])
        raise GridError(f"the grid makes {size:,} members ({words}); a sweep trains at most {MAX_MEMBERS:,}: "
                        "give fewer values or seeds")
    if n_seeds > 1:
        first = base.train.seed
        axes.append(Axis("train.seed", tuple(first + i for i in range(n_seeds))))
    return base, Grid(tuple(axes))


# The most members one sweep may have: each is a run directory trained and evaluated in turn.
MAX_MEMBERS = 10_000


def _format(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(str(v) for v in value) or "none"
    return repr(value) if isinstance(value, float) else str(value)


def member_name(values: Mapping[str, Any]) -> str:
    """The run directory name of a member: ``beta=0.5,latent_dim=2,seed=1`` (``base`` for none)."""
    return ",".join(f"{d.split('.', 1)[1]}={_format(v)}" for d, v in values.items()) or "base"


def expand(base: RunConfig, grid: Grid) -> list[Member]:
    """Every member of the grid, in grid order (the last axis varies fastest), each config
    passing ``check_settings``. Raises GridError naming the member that is refused and why."""
    from vaelab.settings import check_settings

    members = []
    for combo in itertools.product(*(a.values for a in grid.axes)):
        values = {a.dotted: v for a, v in zip(grid.axes, combo, strict=True)}
        name = member_name(values)
        try:
            config = _override(base, values, f"member {name}")
            check_settings(config)
        except ConfigError as err:
            raise GridError(f"the sweep member {name} is refused: {err}") from None
        members.append(Member(name, values, config))
    return members
