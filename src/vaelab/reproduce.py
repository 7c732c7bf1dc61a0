"""The exact ``vaelab train`` command (or TOML file) that reproduces a run from its config.

``reproduction(config)`` says which config fields differ from the defaults and whether flags
alone can give them; ``reproduce_command`` writes the command line, ``reproduce_toml`` /
``config_toml`` the TOML file the command points at when flags cannot say everything. A
family's own options (``[model.NAME]`` tables) are given as their ``--NAME-FIELD`` flags, or
in the TOML file.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab import checkpoint as ckpt
from vaelab.config import RunConfig

REPRODUCE_FILE = ckpt.REPRODUCE_FILE


# How `vaelab train` takes each config field (section, field): a flag named like the field
# (``n_train`` -> ``--n-train``) unless renamed here, the --data argument, or only a TOML file.
# tests/test_reproduce.py walks every config field against the CLI's options, so a new field
# without a flag must be listed in TOML_ONLY (and is then reproduced through --config).
FLAG_RENAMES: dict[tuple[str, str], str] = {
    ("data", "seed"): "--data-seed",
    ("model", "kind"): "--model",
    ("eval", "k"): "--eval-k",
}
DATA_ARGUMENT = (("data", "name"), ("data", "path"))  # both given as --data NAME_OR_PATH
TOML_ONLY: frozenset[tuple[str, str]] = frozenset({
    ("train", "diversity_samples"),
    ("eval", "batch_size"),
    ("eval", "seed"),
})


def config_fields() -> list[tuple[str, str]]:
    """Every (section, field) of a RunConfig, in declaration order."""
    return [
        (section, key)
        for section, info in RunConfig.model_fields.items()
        for key in info.annotation.model_fields  # type: ignore[union-attr]
    ]


def train_flags() -> dict[tuple[str, str], str]:
    """(section, field) -> the ``vaelab train`` flag that sets it, for every field that has one."""
    return {
        field: FLAG_RENAMES.get(field, "--" + field[1].replace("_", "-"))
        for field in config_fields()
        if field not in TOML_ONLY and field not in DATA_ARGUMENT
    }


def family_flags(config: RunConfig) -> list[tuple[str, Any]] | None:
    """(flag, value) of every family option the config gives (its ``[model.NAME]`` tables), or
    None when one of them has no flag: a nested table, or a family not registered in this
    process. The flags are those of the sweep's one flag table (vaelab.sweep.grid.flag_table)."""
    from vaelab.sweep.grid import flag_table

    flags = {dotted: flag for flag, dotted in flag_table().items()}
    given: list[tuple[str, Any]] = []
    for name, table in config.model.family_tables.items():
        for option, value in table.items():
            flag = flags.get(f"model.{name}.{option}")
            if flag is None:
                return None
            given.append((flag, value))
    return given


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def config_toml(config: RunConfig, base: RunConfig | None = None) -> str:
    """The config as TOML that ``vaelab train --config`` reads back to the same config.

    With ``base``, only the values that differ from it are written (what a ``--config`` file
    laid over that base must say). None values are left out (every optional field defaults
    to None); nested tables are written as ``[section.field]``.
    """
    lines: list[str] = []
    reference = None if base is None else base.model_dump()

    def table(name: str, values: dict[str, Any]) -> None:
        plain = {k: v for k, v in values.items() if v is not None and not isinstance(v, dict)}
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in plain.items())
        lines.append("")
        for k, v in nested.items():
            table(f"{name}.{k}", v)

    for section, values in config.model_dump().items():
        if reference is not None:
            values = {k: v for k, v in values.items() if v != reference[section].get(k)}
            if not values:
                continue
        table(section, values)
    return "\n".join(lines)


def _is_file_arg(data: str) -> bool:
    """How ``vaelab train --data`` tells a path from a dataset name (the same rule as the CLI)."""
    return Path(data).suffix.lower() in (".npy", ".npz", ".csv") or os.sep in data


@dataclass(frozen=True)
class Reproduction:
    """How ``vaelab train`` rebuilds a config: the preset it starts from and what differs.

    preset: the preset the command starts from (None: the library defaults).
    preset_flag: whether ``--preset`` must be given (image data start from the default image
        preset without it, unless ``--config`` is given).
    changed: the (section, field) whose values differ from that starting point.
    needs_toml: some change has no flag, so the command reads a TOML file instead.
    """

    preset: str | None
    preset_flag: bool
    base: RunConfig
    changed: tuple[tuple[str, str], ...]
    needs_toml: bool


def _accepted(base: RunConfig, changed: tuple[tuple[str, str], ...], current: dict[str, Any],
              tables: dict[str, dict[str, Any]]) -> bool:
    """Whether the re-run's settings (``changed`` and the family ``tables`` given explicitly over
    ``base``) pass the CLI's check."""
    from vaelab.config import ConfigError
    from vaelab.settings import check_settings

    overrides: dict[str, dict[str, Any]] = {"model": dict(tables)}
    for section, key in changed:
        overrides.setdefault(section, {})[key] = current[section][key]
    try:
        check_settings(base.with_overrides(overrides))
    except (ConfigError, ValueError):
        return False
    return True


def reproduction(config: RunConfig) -> Reproduction:
    """The cheapest way ``vaelab train`` rebuilds ``config``: the starting point (defaults or a
    preset, as the CLI applies them) with the fewest differences, then flags or a TOML file."""
    from vaelab.data.registry import is_image_config
    from vaelab.presets import DEFAULT_IMAGE_PRESET, PRESETS, apply_preset

    defaults = RunConfig()
    image = is_image_config(config.data)
    # (preset, flag needed, base). Without --preset and --config the CLI starts image data from
    # the default image preset, and other data from the library defaults.
    # With --config the CLI applies no preset: image data then start from the library defaults
    # too, through a TOML file (the last resort, for configs no flag command can give).
    starts: list[tuple[str | None, bool, RunConfig]] = [(None, False, defaults)]
    starts += [(name, not (image and name == DEFAULT_IMAGE_PRESET), apply_preset(defaults, name)) for name in PRESETS]
    current = config.model_dump()
    flags = train_flags()
    tables = config.model.family_tables
    family_toml = family_flags(config) is None  # some family option has no flag
    best: Reproduction | None = None
    best_key: tuple[bool, bool, int, bool] = (True, True, 0, True)
    for preset, flag, base in starts:
        reference = base.model_dump()
        changed = tuple(f for f in config_fields() if current[f[0]][f[1]] != reference[f[0]][f[1]])
        if any(current[section][key] is None for section, key in changed):
            continue  # the start sets what this run left unset (iwae-paper's --limit-train): no flag unsets it
        needs_toml = family_toml or any(f not in flags and f not in DATA_ARGUMENT for f in changed)
        if config.data.path is not None and (not _is_file_arg(config.data.path) or ("data", "name") in changed):
            needs_toml = True  # --data takes either a name or a path that looks like one
        if image and preset is None:
            needs_toml = True
        option = Reproduction(preset, flag, base, changed, needs_toml)
        # Prefer a start the CLI accepts (a preset can make a setting explicit that the run had
        # by default, e.g. --epochs beside --steps), then a command of flags alone, then the
        # fewest changes, then no --preset.
        key = (not _accepted(base, changed, current, tables), needs_toml, len(changed), flag)
        if best is None or key < best_key:
            best, best_key = option, key
    assert best is not None
    return best


def reproduce_toml(config: RunConfig) -> str:
    """The TOML file that :func:`reproduce_command` reads when some option has no flag."""
    return config_toml(config, base=reproduction(config).base)


def reproduce_command(config: RunConfig, out: str | Path) -> tuple[str, bool]:
    """The ``vaelab train`` command that trains this config again into ``out``.

    Returns (command, needs_toml). The command starts where the CLI starts (the library
    defaults, the default image preset for image data, or ``--preset NAME``) and gives a
    flag for every option that differs from there. When some differing option has no flag,
    the command reads ``out/reproduce.toml`` instead (write it with :func:`reproduce_toml`)
    and needs_toml is True. Running the command writes the same config.json.
    """
    plan = reproduction(config)
    current = config.model_dump()
    if plan.needs_toml:
        cmd = ["vaelab", "train"]
        if plan.preset is not None:  # with --config, the CLI applies no preset unless told
            cmd += ["--preset", plan.preset]
        cmd += ["--config", str(Path(out) / REPRODUCE_FILE), "--out", str(out)]
        return " ".join(shlex.quote(p) for p in cmd), True
    cmd = ["vaelab", "train", "--data", str(config.data.path or config.data.name)]
    if plan.preset_flag:
        cmd += ["--preset", str(plan.preset)]
    flags = train_flags()
    for section, key in plan.changed:
        if (section, key) in flags:
            flag, value = flags[(section, key)], current[section][key]
            if isinstance(value, bool):  # typer's on/off pair: --compile / --no-compile
                cmd.append(flag if value else "--no-" + flag.removeprefix("--"))
            else:
                cmd += [flag, _flag_value(value)]
    for flag, value in family_flags(config) or []:  # a family's own options, after --model
        cmd += [flag, _flag_value(value)]
    cmd += ["--out", str(out)]
    return " ".join(shlex.quote(p) for p in cmd), False
