"""Helpers every command shares: user errors as one-line messages, the device, integer lists, and
how help shows options (panels, flags without a metavar, defaults read from the configs)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from vaelab.cli.console import err_console
from vaelab.errors import InputError, VaelabError, VaelabNote, VaelabWarning

if TYPE_CHECKING:
    import torch

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn vaelab's own errors (``VaelabError``) and the operating system's errors about the
    user's files (``OSError``: a missing folder, a full disk) into a one-paragraph message and
    exit code 2. Anything else is a bug in vaelab and keeps its traceback.

    Set VAELAB_DEBUG=1 to see the full traceback of a user error too.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():  # restores Python's own printer when the command ends
                warnings.showwarning = show_warning
                return fn(*args, **kwargs)
        except (VaelabError, OSError) as err:
            if os.environ.get("VAELAB_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """How the command line shows a Python warning: one line on stderr, ``note: ...`` for vaelab's
    notes (``VaelabNote``), ``warning: ...`` for anything else, never Python's own format (the
    file, line and source of the ``warnings.warn`` call). The library warns; the CLI prints."""
    label = "note" if issubclass(category, VaelabNote) else "warning"
    text = " ".join(str(message).split())
    if not issubclass(category, VaelabWarning):  # another library's: say whose
        text = f"{text} (from {Path(filename).parts[-2] if len(Path(filename).parts) > 1 else filename})"
    colour = "cyan" if label == "note" else "yellow"
    err_console.print(f"[bold {colour}]{label}:[/] {escape(text)}", markup=True, highlight=False, soft_wrap=True)


def pick_device(name: str) -> torch.device:
    """``--device``: ``auto`` -> cuda if available, then mps, else cpu; otherwise the named device,
    checked (the library's one rule, ``vaelab.devices.pick_device``)."""
    from vaelab.devices import pick_device as pick  # here, not at the top: torch loads with it

    return pick(name, option="--device")


def vaelab_command() -> str:
    """How to call vaelab again, for commands a message prints (the resume line after Ctrl-C):
    ``vaelab`` when that name finds this very program on PATH, else the path it was started by
    (``.venv/bin/vaelab`` when the environment is not activated), or ``python -m vaelab``."""
    import shlex
    import shutil

    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "__main__.py":  # python -m vaelab
        on_path = shutil.which("python")
        python = "python" if on_path and Path(on_path).resolve() == Path(sys.executable).resolve() \
            else sys.executable
        return f"{shlex.quote(python)} -m vaelab"
    if Path(argv0).name != "vaelab":  # called in-process (tests, a notebook)
        return "vaelab"
    found = shutil.which("vaelab")
    if found and Path(found).resolve() == Path(argv0).resolve():
        return "vaelab"
    return shlex.quote(argv0)


def _split_numbers(text: str | None, what: str, element: type[int] | type[float] = int) -> list | None:
    """A comma-separated flag value as a list of ints (--hidden 128,128) or floats (--adam-betas 0.9,0.999);
    None when the flag was not given, [] for an empty value."""
    if text is None:
        return None
    noun, example = ("integers", "128,128") if element is int else ("numbers", "0.9,0.999")
    parts = text.replace(" ", "").split(",")
    if "" in parts and text.strip():  # "32,,32" was read as 32,32 (audit TR84)
        raise InputError(f"{what} {text!r} has an empty value between commas; give {noun} like {example}")
    try:
        return [element(v) for v in parts if v]
    except ValueError:
        raise InputError(f"{what} must be comma-separated {noun} like {example}; got {text!r}") from None


# The panels of `vaelab train --help` and `vaelab sweep --help`, in this order.
DATA, MODEL, TRAINING, EVALUATION, RUN = "Data", "Model", "Training", "Evaluation", "Output/run"
CLUSTER = "Cluster (shares, SLURM)"
PANELS = (DATA, MODEL, TRAINING, EVALUATION, RUN, CLUSTER)

# The options of --slurm that `vaelab train` and `vaelab sweep` share (vaelab.cluster.slurm).
SLURM_PARTITION = typer.Option(None, "--partition", help="with --slurm: the partition(s) to run in",
                               rich_help_panel=CLUSTER)
SLURM_TIME = typer.Option(None, "--time", help="with --slurm: the time limit of the job (of each array task) in "
                          "SLURM's forms: 90, 4:00:00, 1-12; near it, vaelab checkpoints and requeues it",
                          rich_help_panel=CLUSTER)
SLURM_CPUS = typer.Option(None, "--cpus-per-task", help="with --slurm: CPUs per task (one task per node for "
                          "train), also torch's threads", rich_help_panel=CLUSTER)
SLURM_DRY_RUN = typer.Option(False, "--dry-run", help="with --slurm: write the script and print it, without "
                             "submitting", rich_help_panel=CLUSTER)


def refuse_without_slurm(slurm: bool, given: dict[str, Any]) -> None:
    """Refuse options of --slurm (flag -> value; None or False: not given) given without --slurm."""
    named = [flag for flag, value in given.items() if value is not None and value is not False]
    if named and not slurm:
        raise InputError(f"{', '.join(named)}: option(s) of --slurm, which this command does not have: add --slurm "
                         "to submit to SLURM, or drop them")


class VaelabCommand(TyperCommand):
    """A command whose help shows an on/off flag as a flag: ``--overwrite``, not ``--overwrite
    <bool>`` (typer 0.29 gives every flag, --help included, the metavar of its type). Where the
    options are grouped into panels, --help joins the last panel instead of a panel of its own.
    The metavar is cleared only when help is drawn: parsing never reads it."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Refuse an empty path option (``--out ''``) by its name, before click turns it into
        ``Path('')``, which is the current folder ``.`` (audit RO21: "'.: already exists")."""
        paths = {opt for p in self.params if isinstance(p, TyperOption) and _is_path(p) for opt in p.opts}
        for i, arg in enumerate(args):
            name, eq, value = arg.partition("=")
            if name in paths and ((eq and not value.strip()) or (not eq and i + 1 < len(args)
                                                                  and not args[i + 1].strip())):
                err_console.print(f"[bold red]error:[/] {escape(name)} '' is empty; give the name of a file or "
                                  "folder", markup=True, highlight=False, soft_wrap=True)
                raise typer.Exit(2)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        panels = [panel for p in self.params if (panel := getattr(p, "rich_help_panel", None))]
        if panels:  # typer draws the panels in the order of their first option: Data, Model, ...
            self.params.sort(key=lambda p: PANELS.index(p.rich_help_panel)  # type: ignore[attr-defined]
                             if getattr(p, "rich_help_panel", None) in PANELS else len(PANELS))
        for param in _plain_flags(self, ctx):
            if param.name == "help" and panels and param.rich_help_panel is None:  # with the run's options
                param.rich_help_panel = RUN if RUN in panels else max(
                    panels, key=lambda p: PANELS.index(p) if p in PANELS else -1)
        super().format_help(ctx, formatter)


def _is_path(param: TyperOption) -> bool:
    """Whether an option is declared as a path (``out: Path = typer.Option(...)``)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return isinstance(annotation, type) and issubclass(annotation, Path)


class VaelabGroup(TyperGroup):
    """The ``vaelab`` group with VaelabCommand's flags: ``--version`` and ``--help`` without
    ``<bool>`` (``typer.Typer(cls=VaelabGroup)``)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)


def _plain_flags(command: Any, ctx: Any) -> list[Any]:
    """Clear the metavar of every on/off flag of ``command`` (help only); returns its params."""
    params = command.get_params(ctx)
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


def _words(dotted: str, value: Any) -> str:
    """A config value as help shows it: 256,256 for a list, on/off for a bool, 0.003 for a float."""
    if value is None:
        return _unset().get(dotted, "none")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _unset() -> dict[str, str]:
    """What an unset (None) config value means, per field."""
    from vaelab.config import DEFAULT_MAX_SKIPS

    return {
        "data.label_column": "none", "data.condition": "none: unconditional",
        "data.data_dir": "$VAELAB_DATA_DIR, else ~/.cache/vaelab",
        "data.limit_train": "all", "data.limit_test": "all",
        "train.steps": "none: --epochs is the budget", "train.max_skips": str(DEFAULT_MAX_SKIPS),
        "train.grad_clip": "off",
        "train.warmup_epochs": "none: --beta-schedule warmup needs this or --warmup-steps",
        "train.warmup_steps": "none: --beta-schedule warmup needs this or --warmup-epochs",
    }


# Where the run, not one value, decides a default: in words, after the value (the rules live in
# vaelab.objectives.requested_objective and vaelab.data.pixels).
_DEPENDS = {
    "train.objective": "; elbo where the KL is weighted: --beta other than 1, a --beta-schedule or --free-bits",
    "data.binarize": ": dynamic for a bernoulli likelihood on images, else none",
}


def config_flags() -> dict[str, str]:
    """Every flag that sets a config field -> its dotted field (``--latent-dim`` ->
    ``model.latent_dim``), from ``vaelab.config.cli_flag``; ``--data`` -> ``data.name``."""
    from vaelab.config import SECTIONS, RunConfig, cli_flag

    table: dict[str, str] = {"--lambda-rec": "model.lambda_rec"}
    for section in SECTIONS:
        for field in RunConfig.model_fields[section].annotation.model_fields:  # type: ignore[union-attr]
            flag = cli_flag(f"{section}.{field}")
            if flag is not None:
                table.setdefault(flag, f"{section}.{field}")
    return table


def config_default(dotted: str) -> str:
    """The default of a config field in words, as `--help` shows it after "default": the
    pydantic field's default (``2``), what the image preset that image data start from sets
    instead (``2; image data 20``), and in words where the run decides it."""
    from vaelab.config import ModelConfig, RunConfig
    from vaelab.presets import DEFAULT_IMAGE_PRESET, preset_overrides

    if dotted == "model.lambda_rec":  # λ_rec = 1/σ²: the second name of recon_var
        var = ModelConfig.model_fields["recon_var"].default
        image_var = preset_overrides(DEFAULT_IMAGE_PRESET)["model"].get("recon_var")
        image = "" if image_var is None or image_var == var else f"; image data {1 / image_var:g}"
        return f"{1 / var:g}, i.e. 1/σ² of --recon-var{image}"
    section, field = dotted.split(".")
    cls = RunConfig.model_fields[section].annotation
    value = cls.model_fields[field].get_default(call_default_factory=True)  # type: ignore[union-attr]
    text = _words(dotted, value) + _DEPENDS.get(dotted, "")
    preset = preset_overrides(DEFAULT_IMAGE_PRESET).get(section, {})
    if field in preset and preset[field] != value:
        text += f"; image data {_words(dotted, preset[field])}"
    return text


def add_defaults(command: Any, ctx: Any, words: dict[str, str]) -> None:
    """Write each option's default into its help, once: "(default 2)". The config decides the
    default of an option typed ``= typer.Option(None)``: its field's default is read from the
    config classes (``config_default``), so help cannot drift from it. ``words``: the default of
    an option that sets no config field, in words, by flag. Other options with a default show
    it the same way; an off flag shows none."""
    if getattr(command, "_defaults_added", False):
        return
    fields = config_flags()
    for param in command.get_params(ctx):
        if not isinstance(param, TyperOption) or param.name == "help":
            continue
        flag = max(param.opts, key=len)
        if flag in words:
            text = words[flag]
        elif flag in fields:
            text = config_default(fields[flag])
        elif param.default is not None and not (param.is_flag and param.default is False):
            text = str(param.default)
        else:
            continue
        param.show_default = False
        param.help = f"{param.help or ''} (default {escape(text)})".strip()
    command._defaults_added = True
