"""The ``vaelab`` commands: parse the options, call the library, print what it returns."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from vaelab.cli import app
from vaelab.cli.common import (
    CLUSTER,
    DATA,
    EVALUATION,
    MODEL,
    RUN,
    SLURM_CPUS,
    SLURM_DRY_RUN,
    SLURM_PARTITION,
    SLURM_TIME,
    TRAINING,
    VaelabCommand,
    _split_numbers,
    add_defaults,
    pick_device,
    refuse_without_slurm,
    user_errors,
    vaelab_command,
)
from vaelab.cli.console import MofNOnceKnown, _fetch_with_progress, _notice, console, err_console
from vaelab.cli.evaluation import PROTOCOL_HELP, _condition_arg, _run_eval
from vaelab.errors import InputError
from vaelab.presets import PRESETS

if TYPE_CHECKING:  # torch is imported by the commands that use it: `vaelab --help` needs none
    import torch


def _is_file_arg(data: str) -> bool:
    """A --data value names a file or folder (else a registered dataset): by its suffix, a
    path separator, or because it exists and is no dataset name (``points.txt`` in the cwd)."""
    from vaelab.data.registry import DATASETS

    return (Path(data).suffix.lower() in (".npy", ".npz", ".csv") or os.sep in data
            or (data not in DATASETS and Path(data).expanduser().exists()))


def check_data_arg(data: str | None, out: Path | None) -> None:
    """Refuse what --data cannot mean before any other option is judged against it: an empty
    value (it read as the current folder, audit TR110, TR110b), several datasets
    (SW05), or a file path that names nothing (TR108, TR109: reported as --n-train not applying)."""
    from vaelab.data.files import check_data_file
    from vaelab.data.registry import DATASETS

    del out  # (an empty --out reaches here as "." already: typer's Path(""); refused as a non-empty folder)
    if data is None:
        return
    if not data.strip():
        raise InputError("--data '' is empty; give a dataset name (see `vaelab datasets`) or a .npy/.npz/.csv file")
    if "," in data and not _is_file_arg(data):
        raise InputError(f"--data {data}: takes one dataset; every run (and every member of a sweep) trains on one "
                         "data set: run one command per dataset")
    path = Path(data).expanduser()
    if _is_file_arg(data) and not os.path.lexists(path):
        similar = f" (did you mean the dataset {path.stem}? give it without a path: --data {path.stem})" \
            if path.stem in DATASETS else ""
        raise InputError(f"{data}: no such file{similar}; --data takes a dataset name or a .npy/.npz/.csv file")
    if _is_file_arg(data) and path.suffix.lower() in (".npy", ".npz", ".csv"):
        check_data_file(path)


def _base_config(config: Path | None, preset: str | None, data: str | None) -> Any:
    """Defaults < preset < --config file; image data without either get the default image preset."""
    from vaelab.config import DataConfig, RunConfig, read_toml
    from vaelab.data.registry import is_image_config
    from vaelab.presets import DEFAULT_IMAGE_PRESET, apply_preset

    if preset is None and config is None and data is not None:
        try:
            probe = DataConfig(path=data) if _is_file_arg(data) else DataConfig(name=data)
        except ValueError:  # an unknown name: reported with the other options, below
            probe = None
        if probe is not None and is_image_config(probe):
            preset = DEFAULT_IMAGE_PRESET
            console.print(f"image data: starting from preset [bold]{preset}[/] (choose with --preset or --config)",
                          highlight=False)
    if preset is None:
        return RunConfig.from_toml(config) if config is not None else RunConfig()
    base = apply_preset(RunConfig(), preset)
    if config is None:
        return base
    return base.with_overrides(read_toml(config), source=str(config))


def _grey_levels(cfg: Any) -> Any:
    """Grey-level images (--binarize none) whose preset's Bernoulli the user did not choose get
    vaelab's grey-level likelihood instead, said in one line (vaelab.presets.grey_level_likelihood)."""
    from vaelab.data.registry import grey_levels, is_image_config
    from vaelab.presets import grey_level_likelihood

    cfg, note = grey_level_likelihood(cfg, image=is_image_config(cfg.data), levels=grey_levels(cfg.data))
    if note is not None:
        console.print(note, highlight=False)
    return cfg


def _family_flag_table() -> dict[str, str]:
    """The ``--NAME-FIELD`` flags of the families' own options -> ``model.NAME.FIELD``: the
    family part of the sweep's one flag table (vaelab.sweep.grid.flag_table)."""
    from vaelab.sweep.grid import flag_table

    return {flag: dotted for flag, dotted in flag_table().items() if dotted.count(".") == 2}


def _family_flags(ctx: typer.Context) -> dict[str, dict[str, Any]]:
    """The family options among the words typer left over (``ctx.args``): ``--tempered-tau-end
    0.5`` -> ``{"tempered": {"tau_end": 0.5}}``, each value parsed with the option's type.

    typer knows the static options only; the families' options come from their options classes
    at run time, so `vaelab train` passes unknown words through to here. Any word that is no
    family flag is refused with exit code 2, naming the close matches, as typer refuses them.
    """
    if not ctx.args:
        return {}
    from difflib import get_close_matches

    from vaelab.sweep.grid import parse_value

    flags = _family_flag_table()
    own = {opt for param in ctx.command.params for opt in (*param.opts, *param.secondary_opts)}
    clash = sorted(set(flags) & own)
    if clash:  # typer would take such a word for its own option: the family's would be lost
        raise InputError(f"family options {', '.join(clash)} have the names of options of vaelab train; "
                         "rename those options of the family")
    tables: dict[str, dict[str, Any]] = {}
    words = list(ctx.args)
    i = 0
    while i < len(words):
        flag, has_value, text = words[i].partition("=")
        if not flag.startswith("-"):
            raise InputError(f"unexpected extra argument {words[i]!r}: vaelab train takes options only "
                             "(see vaelab train --help)")
        if flag not in flags:
            close = get_close_matches(flag, sorted(own | set(flags)), n=3)
            hint = (f"Did you mean {close[0]}?" if len(close) == 1 else f"(Possible options: {', '.join(close)})"
                    if close else "See vaelab train --help.")
            raise InputError(f"No such option: {flag} {hint}")
        if not has_value:
            if i + 1 >= len(words):
                raise InputError(f"option {flag} requires a value: {flag} VALUE")
            i += 1
            text = words[i]
        _, name, option = flags[flag].split(".")
        if option in tables.get(name, {}):
            raise InputError(f"option {flag} is given twice; give it once")
        tables.setdefault(name, {})[option] = parse_value(flag, flags[flag], text)
        i += 1
    return tables


def preset_note() -> str:
    """The paragraph of train and sweep help that says where image data take their defaults from."""
    from vaelab.presets import DEFAULT_IMAGE_PRESET

    return (f"Defaults are those of points (toy data and your files); image data given neither --preset nor "
            f"--config start from the preset {DEFAULT_IMAGE_PRESET}, whose values help shows as \"image data …\".")


# The defaults of the options that set no config field, in words (the others' come from the configs).
def _run_defaults() -> dict[str, str]:
    from vaelab.presets import DEFAULT_IMAGE_PRESET

    return {"--config": "none", "--out": "runs/<data>-<model>-<time>", "--preset": f"none; image data "
            f"{DEFAULT_IMAGE_PRESET}", "--nproc": "1: this process, no torchrun"}


# The likelihoods of vaelab.likelihoods.LIKELIHOODS (the CLI does not import torch to list them;
# tests/test_cli_help.py checks this line against the registry).
LIKELIHOOD_HELP = ("p(x|z): gaussian (fixed σ²), gaussian-learned, gaussian-sigmoid (mean in (0, 1)), bernoulli, "
                   "continuous-bernoulli, logistic256 (8-bit grey levels)")


class _TrainHelp(VaelabCommand):
    """`vaelab train --help`: options in panels, each with its default read from the configs
    (``add_defaults``), ending with the options of every family that declares some, one group
    per family, from the families' options classes (names, types, descriptions, defaults).

    The family registry imports torch, which plain help must not need (tests/test_startup.py):
    `vaelab train --model NAME --help` loads it and lists NAME's options; without --model the
    options of every family in a registry already loaded (or of installed plugin families) are
    listed, else a pointer to `--model NAME --help`.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        self._given = list(args)  # --help is eager: --model has no value in ctx yet when help is drawn
        return super().parse_args(ctx, args)

    def _model_given(self) -> str | None:
        given = getattr(self, "_given", [])
        for i, arg in enumerate(given):
            if arg == "--model" and i + 1 < len(given):
                return given[i + 1]
            if arg.startswith("--model="):
                return arg.split("=", 1)[1]
        return None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if not getattr(self, "_defaults_added", False):
            self.help = f"{self.help}\n\n{preset_note()}"
        add_defaults(self, ctx, _run_defaults())
        model = self._model_given()
        from vaelab.plugins import family_entry_points

        if model is not None or "vaelab.models" in sys.modules or family_entry_points():
            self.epilog = _family_help(model)
        else:
            self.epilog = escape(
                "Model families with options of their own (" + ", ".join(_FAMILIES_WITH_OPTIONS) + "): "
                "`vaelab train --model NAME --help` lists NAME's options (docs/families.md).")
        super().format_help(ctx, formatter)


# The built-in families that declare options, named in plain `train --help` (which loads no
# family code); tests/test_cli_help.py checks the list against the registry.
_FAMILIES_WITH_OPTIONS = ("planar", "radial", "iaf", "vamp", "mog", "ladder", "gumbel", "vq")


def _metavar(annotation: Any) -> str:
    """How help shows what a flag takes: FLOAT, INTEGER, TEXT, true|false, a|b (a Literal), N,N,..."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return "|".join(_metavar(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin is list:
        return "N,N,..."
    names = {bool: "true|false", int: "INTEGER", float: "FLOAT", str: "TEXT"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _family_help(only: str | None = None) -> str | None:
    """The help text of the family options (rich markup escaped), or None when no family has any;
    ``only``: the options of that family alone (all of them when it is not a known family)."""
    from vaelab.models import FAMILIES, option_schemas
    from vaelab.sweep.grid import flag_table

    schemas = option_schemas()
    if only is not None and only in FAMILIES:
        if only not in schemas:
            return escape(f"--model {only} ({FAMILIES[only].__name__}) has no options of its own.")
        schemas = {only: schemas[only]}
    if not schemas:
        return None
    lines: dict[str, list[str]] = {name: [] for name in schemas}
    for flag, dotted in flag_table().items():
        if dotted.count(".") == 2 and dotted.split(".")[1] in schemas:
            _, name, option = dotted.split(".")
            info = schemas[name].model_fields[option]
            default = info.get_default(call_default_factory=True)
            lines[name].append(f"  {flag} {_metavar(info.annotation)}: {info.description or option} "
                               f"(default {default!r})")
    groups = [f"--model {name} ({FAMILIES[name].__name__}):\n" + "\n".join(rows) for name, rows in lines.items()]
    return escape("Options of a model family: with --model NAME, as --NAME-OPTION VALUE or in a [model.NAME] "
                  "table of --config; `vaelab sweep` takes comma lists of them.\n\n" + "\n\n".join(groups))


@app.command(cls=_TrainHelp, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def train(
    ctx: typer.Context,
    data: str = typer.Option(None, "--data", help="dataset name (see `vaelab datasets`) or a .npy/.npz/.csv file",
                             rich_help_panel=DATA),
    n_train: int = typer.Option(None, help="points drawn for training (toy data)", rich_help_panel=DATA),
    n_test: int = typer.Option(None, help="held-out points drawn for evaluation (toy data)", rich_help_panel=DATA),
    label_column: str = typer.Option(None, help="CSV column holding class labels (text or numbers)",
                                     rich_help_panel=DATA),
    condition: str = typer.Option(None, "--condition", help="train a conditional VAE on: label, radius, "
                                  "or column:NAME[,NAME...] (numeric CSV columns)", rich_help_panel=DATA),
    cond_embed: str = typer.Option(None, help="widths of the MLP embedding a continuous condition, e.g. 16,16",
                                   rich_help_panel=MODEL),
    data_seed: int = typer.Option(None, help="seed of the data draw / split", rich_help_panel=DATA),
    data_dir: Path = typer.Option(None, help="root of downloaded image datasets", rich_help_panel=DATA),
    image_split: str = typer.Option(None, help="official, or test-9k (first 9,000 test images train, last 1,000 test)",
                                    rich_help_panel=DATA),
    binarize: str = typer.Option(None, help="auto, dynamic, fixed or none (pixels as Bernoulli draws)",
                                 rich_help_panel=DATA),
    limit_train: int = typer.Option(None, help="use only the first N training points", rich_help_panel=DATA),
    limit_test: int = typer.Option(None, help="use only the first N test points", rich_help_panel=DATA),
    image_size: int = typer.Option(None, help="side images of a folder are resized to", rich_help_panel=DATA),
    test_fraction: float = typer.Option(None, help="share of a user file / image folder / digits held out for "
                                        "testing", rich_help_panel=DATA),
    preset: str = typer.Option(None, help=f"image preset: {', '.join(PRESETS)}",
                               rich_help_panel=MODEL),
    model: str = typer.Option(None, "--model", help="vae, ae (plain autoencoder), "
                              f"{', '.join(_FAMILIES_WITH_OPTIONS)}, or a plugin's family (docs/models.md)",
                              rich_help_panel=MODEL),
    net: str = typer.Option(None, help="encoder/decoder body: mlp, conv or resconv (images)", rich_help_panel=MODEL),
    channels: str = typer.Option(None, help="conv channels, e.g. 8,16,32 (--net conv, resconv)", rich_help_panel=MODEL),
    hidden: str = typer.Option(None, help="hidden layer sizes, e.g. 128,128", rich_help_panel=MODEL),
    activation: str = typer.Option(None, help="relu, silu, tanh, elu, leaky_relu, gelu, softplus",
                                   rich_help_panel=MODEL),
    latent_dim: int = typer.Option(None, help="dimension of z", rich_help_panel=MODEL),
    scale: str = typer.Option(None, help="encoder scale: logvar, softplus or exp", rich_help_panel=MODEL),
    likelihood: str = typer.Option(None, help=LIKELIHOOD_HELP, rich_help_panel=MODEL),
    recon_var: float = typer.Option(None, help="σ² of the fixed Gaussian likelihood (--likelihood gaussian)",
                                    rich_help_panel=MODEL),
    min_var: float = typer.Option(None, help="floor of the learned Gaussian variance (gaussian-learned)",
                                  rich_help_panel=MODEL),
    lambda_rec: float = typer.Option(None, help="λ_rec = 1/σ², the same knob as --recon-var", rich_help_panel=MODEL),
    output_bias: str = typer.Option(None, help="the decoder's output bias at the start: default, or data-mean (the "
                                    "training mean's logits; Bernoulli MLP decoders)", rich_help_panel=MODEL),
    objective: str = typer.Option(None, help="elbo or iwae", rich_help_panel=TRAINING),
    beta: float = typer.Option(None, help="KL weight β", rich_help_panel=TRAINING),
    k: int = typer.Option(None, "--k", help="importance samples of the IWAE objective", rich_help_panel=TRAINING),
    lr: float = typer.Option(None, help="Adam learning rate", rich_help_panel=TRAINING),
    lr_schedule: str = typer.Option(None, help="constant, cosine decay to 0 over the budget, or burda (Burda et "
                                    "al. 2016: 3^i epochs at lr·10^(-i/7), i = 0..7)", rich_help_panel=TRAINING),
    adam_betas: str = typer.Option(None, help="Adam's β1,β2, e.g. 0.9,0.999", rich_help_panel=TRAINING),
    adam_eps: float = typer.Option(None, help="Adam's ε", rich_help_panel=TRAINING),
    epochs: int = typer.Option(None, help="passes over the data", rich_help_panel=TRAINING),
    steps: int = typer.Option(None, help="optimizer steps (replaces --epochs as the budget)", rich_help_panel=TRAINING),
    batch_size: int = typer.Option(None, help="batch size", rich_help_panel=TRAINING),
    seed: int = typer.Option(None, help="seed of init, shuffling and noise", rich_help_panel=TRAINING),
    checkpoint_every: int = typer.Option(None, help="checkpoint every N epochs", rich_help_panel=RUN),
    nonfinite: str = typer.Option(None, help="on a NaN/inf loss or gradient: stop, or skip the step and halve the "
                                  "learning rate", rich_help_panel=TRAINING),
    max_skips: int = typer.Option(None, help="steps --nonfinite skip may skip before training stops",
                                  rich_help_panel=TRAINING),
    grad_clip: float = typer.Option(None, help="clip the gradient norm to this value before each step",
                                    rich_help_panel=TRAINING),
    beta_schedule: str = typer.Option(None, help="β over training: constant, warmup (linear from 0) or "
                                      "cyclical (Fu et al. 2019); see docs/objectives.md", rich_help_panel=TRAINING),
    warmup_epochs: int = typer.Option(None, help="warm-up length in epochs (--beta-schedule warmup)",
                                      rich_help_panel=TRAINING),
    warmup_steps: int = typer.Option(None, help="warm-up length in optimizer steps (--beta-schedule warmup)",
                                     rich_help_panel=TRAINING),
    cycles: int = typer.Option(None, help="annealing cycles over the budget (--beta-schedule cyclical)",
                               rich_help_panel=TRAINING),
    cycle_ratio: float = typer.Option(None, help="share of each cycle over which β rises from 0 (cyclical)",
                                      rich_help_panel=TRAINING),
    free_bits: float = typer.Option(None, help="free bits λ in nats: floor on the batch-averaged KL of each "
                                    "group; 0: off (the ELBO's KL: not with --objective iwae)",
                                    rich_help_panel=TRAINING),
    free_bits_group: str = typer.Option(None, help="what λ floors: dim (each latent dimension), all, "
                                       "or layer (each layer of a hierarchical model: --model ladder)",
                                       rich_help_panel=TRAINING),
    compile_step: bool = typer.Option(None, "--compile/--no-compile", help="compile the training step with "
                                      "torch.compile: faster steps after a one-time compilation",
                                      rich_help_panel=TRAINING),
    eval_k: int = typer.Option(None, help="importance samples for the evaluation NLL", rich_help_panel=EVALUATION),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip the held-out evaluation at the end",
                                 rich_help_panel=EVALUATION),
    config: Path = typer.Option(None, "--config", help="TOML file with \\[data] \\[model] \\[train] \\[eval] tables",
                                rich_help_panel=RUN),
    out: Path = typer.Option(None, "--out", "-o", help="run directory", rich_help_panel=RUN),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps", rich_help_panel=RUN),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory", rich_help_panel=RUN),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint",
                                rich_help_panel=RUN),
    no_report: bool = typer.Option(False, "--no-report", help="skip the figures and RUN/report.html at the end",
                                   rich_help_panel=RUN),
    init_from: Path = typer.Option(None, "--init-from", metavar="RUN", help="start from the weights and settings "
                                   "of the run in RUN (flags change the training: e.g. a vq run's second stage, "
                                   "--objective vq_prior --out RUN/prior)", rich_help_panel=RUN),
    nproc: int = typer.Option(None, "--nproc", help="train on N processes of this machine: runs this command "
                              "under torchrun --standalone --nproc-per-node N (gloo on CPU, nccl on CUDA)",
                              rich_help_panel=RUN),
    slurm: bool = typer.Option(False, "--slurm", help="submit this run to SLURM as one job: srun starts torchrun "
                               "on each of --nodes nodes with --nproc processes each (script in OUT.slurm/)",
                               rich_help_panel=CLUSTER),
    nodes: int = typer.Option(None, "--nodes", help="with --slurm: the number of nodes", rich_help_panel=CLUSTER),
    partition: str = SLURM_PARTITION,
    time_limit: str = SLURM_TIME,
    cpus_per_task: int = SLURM_CPUS,
    gpus_per_node: int = typer.Option(None, "--gpus-per-node", help="with --slurm: GPUs per node",
                                      rich_help_panel=CLUSTER),
    dry_run: bool = SLURM_DRY_RUN,
) -> None:
    """Train a model and write a run directory (config, weights, history, metrics, figures, report).

    Under torchrun (``torchrun --nproc-per-node N -m vaelab train ...``, or ``--nproc N``) every
    process trains its share of each batch; rank 0 alone writes the run, evaluates and reports.
    """
    from vaelab.config import ConfigError, absolute_path
    from vaelab.distributed import World
    from vaelab.train import TrainingDiverged, TrainingInterrupted, train_run

    family_over = _family_flags(ctx)  # refuses an unknown option before anything is read
    refuse_without_slurm(slurm, {"--nodes": nodes, "--partition": partition, "--time": time_limit,
                                 "--cpus-per-task": cpus_per_task, "--gpus-per-node": gpus_per_node,
                                 "--dry-run": dry_run})
    check_data_arg(None if resume else data, out)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; give only one")
    if resume and (config is not None or preset is not None):
        raise ConfigError("--resume continues a run with its saved config; drop --config / --preset and give "
                          "what may change as flags (--epochs / --steps, --lr, --checkpoint-every, --eval-k)")
    if init_from is not None:
        given = [flag for flag, value in (("--resume", resume or None), ("--config", config), ("--preset", preset),
                                          ("--data", data)) if value is not None]
        if given:
            raise ConfigError(f"--init-from starts from the run in {init_from} with its own data and model settings; "
                              f"drop {', '.join(given)}")
        from vaelab import checkpoint as ckpt

        base = ckpt.load(init_from).config
        for section in ("data", "model", "train", "eval"):  # the run's settings are the base, not given now:
            getattr(base, section).__pydantic_fields_set__ = set()  # only this command's flags are checked
    else:
        base = _base_config(config, preset, None if resume else data)
    data_over: dict[str, Any] = {
        "n_train": n_train, "n_test": n_test, "label_column": label_column, "seed": data_seed,
        "condition": condition,
        "data_dir": None if data_dir is None else str(data_dir), "image_split": image_split,
        "binarize": binarize, "limit_train": limit_train, "limit_test": limit_test, "image_size": image_size,
        "test_fraction": test_fraction,
    }
    if data is not None:
        if _is_file_arg(data):
            # Stored absolute, so the run can be evaluated from any working directory.
            data_over["path"] = absolute_path(data)
        else:
            data_over["name"] = data
            data_over["path"] = None
            base = base.model_copy(update={"data": base.data.model_copy(update={"path": None})})
    model_over: dict[str, Any] = {
        "kind": model, "net": net, "channels": _split_numbers(channels, "--channels"),
        "hidden": _split_numbers(hidden, "--hidden"), "activation": activation,
        "latent_dim": latent_dim, "scale": scale, "likelihood": likelihood, "recon_var": recon_var,
        "min_var": min_var, "cond_embed": _split_numbers(cond_embed, "--cond-embed"), "output_bias": output_bias,
        **family_over,  # [model.NAME] tables, laid over those of --config
    }
    if lambda_rec is not None:
        model_over["lambda_rec"] = lambda_rec
        if recon_var is None:
            model_over["recon_var"] = 1.0 / lambda_rec if lambda_rec > 0 else None
    cfg = base.with_overrides({
        "data": data_over,
        "model": model_over,
        "train": {"objective": objective, "beta": beta, "k": k, "lr": lr, "lr_schedule": lr_schedule,
                  "adam_betas": _split_numbers(adam_betas, "--adam-betas", float), "adam_eps": adam_eps,
                  "epochs": epochs, "steps": steps, "batch_size": batch_size, "seed": seed,
                  "checkpoint_every": checkpoint_every, "nonfinite": nonfinite, "max_skips": max_skips,
                  "grad_clip": grad_clip, "beta_schedule": beta_schedule, "warmup_epochs": warmup_epochs,
                  "warmup_steps": warmup_steps, "cycles": cycles, "cycle_ratio": cycle_ratio,
                  "free_bits": free_bits, "free_bits_group": free_bits_group, "compile": compile_step},
        "eval": {"k": eval_k},
    }, source="command-line options" if config is None else f"{config} and the command-line options")
    if data is not None and _is_file_arg(data):
        cfg.data.__pydantic_fields_set__.discard("name")  # --data chose a file: no dataset name was given
    if not resume:
        cfg = _grey_levels(cfg)
    world = World.from_env()
    if nproc is not None and (isinstance(nproc, bool) or nproc < 1):
        raise InputError(f"--nproc is the number of processes to train on, a positive integer; got {nproc}")
    if nproc is not None and world.distributed:
        raise InputError("--nproc starts torchrun, and this command already runs under torchrun "
                         f"(WORLD_SIZE={world.size}); drop --nproc")
    if out is None:
        if resume:
            raise InputError("--resume needs --out pointing at the run to continue")
        if world.distributed:  # each process would name its own folder after its own clock
            raise InputError("under torchrun every process writes to one run directory: give --out")
        stem = Path(cfg.data.path).stem if cfg.data.path else cfg.data.name
        out = Path("runs") / f"{stem}-{cfg.model.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    dev = pick_device(device)
    if not resume:  # refuse a setting that would change nothing before any output or download
        from vaelab.settings import check_settings

        check_settings(cfg)
    if slurm:
        from vaelab.cluster.slurm import SlurmOptions

        options = SlurmOptions(partition=partition, time=time_limit, cpus_per_task=cpus_per_task,
                               gpus_per_task=gpus_per_node)
        _submit_train(out, nodes or 1, nproc or 1, options, dry_run=dry_run, fresh=not (resume or overwrite))
        return
    if nproc is not None and nproc > 1:
        raise typer.Exit(_launch_torchrun(nproc, out))
    if world.distributed and not world.is_main:
        console.quiet = True  # rank 0 speaks for the run; errors still reach stderr
    if not resume and world.is_main:  # rank 0 downloads; the others read after it prepared the run
        _fetch_with_progress(cfg.data)
    if resume:  # the run's own config applies, not the defaults this command started from
        console.print(f"resuming {out} from its last checkpoint (device {dev})", highlight=False)
    else:
        console.print(f"training [bold]{cfg.model.kind}[/] on [bold]{cfg.data.path or cfg.data.name}[/] "
                      f"-> {out} (device {dev})", highlight=False)
    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNOnceKnown(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        disable=not console.is_terminal and bool(os.environ.get("CI")),
    ) as progress:
        # The step total is known once train_run has the data: until its first step, say what it does.
        task = progress.add_task("loading the run's last checkpoint …" if resume else
                                 "loading data, building the model …", total=None)

        def on_step(info: Any) -> None:
            if info.skipped:  # --nonfinite skip: say so when it happens, not only in history.csv
                progress.console.print(f"step {info.step} (epoch {info.epoch}): non-finite loss or gradient; "
                                       f"step skipped, learning rate halved", highlight=False)
            if info.step == 1 or info.step % 20 == 0 or info.step == info.total_steps:
                progress.update(task, total=info.total_steps, completed=info.step,
                                description=f"epoch {info.epoch} loss {info.loss:.3f} "
                                            + " ".join(f"{name} {v:.3f}" for name, v in info.terms.items()))

        try:
            with _StopOnSignal() as stop:
                try:
                    run = train_run(cfg, out, device=dev, resume=resume, overwrite=overwrite, on_step=on_step,
                                    init_from=init_from,
                                    should_stop=stop.requested)
                except TrainingInterrupted as err:
                    progress.stop()
                    err_console.print(
                        f"interrupted ({stop.name}) at step {err.step} (epoch {err.epoch}): saved a checkpoint "
                        f"of this step in {out}\nresume with: {vaelab_command()} train --out {out} "
                        "--resume",
                        highlight=False, soft_wrap=True)
                    raise typer.Exit(stop.exit_code) from None
        except _SignalAgain as again:
            progress.stop()
            err_console.print(
                f"stopped at once ({again.name} again); {out} keeps its last completed checkpoint\n"
                f"resume with: {vaelab_command()} train --out {out} --resume", highlight=False, soft_wrap=True)
            raise typer.Exit(again.exit_code) from None
        except TrainingDiverged:
            if not no_report:  # the report shows the failure and the last good checkpoint
                _write_report(Path(out))
            raise
    if stop.signal is not None:  # the signal came as training finished: the run is complete
        err_console.print(f"interrupted ({stop.name}) after the last training step: {out} holds the finished "
                          f"run; evaluation and report skipped (run `vaelab eval {out}` and "
                          f"`vaelab report {out}`)", highlight=False, soft_wrap=True)
        raise typer.Exit(stop.exit_code)
    if run.condition is not None and no_eval:  # the evaluation prints it otherwise
        console.print(f"condition {run.condition.describe()}", highlight=False)
    last = run.history.last
    if last is not None:
        console.print(f"done: {last['epoch']} epochs, {last['step']} steps in {last['seconds']:.1f} s; "
                      f"{_loss_name(run.config)} {last['loss']:.4f} (recon {last['recon']:.4f}, "
                      f"kl {last['kl']:.4f}, last epoch)", highlight=False)
        ratio = _error_to_variance_ratio(run.config.model, run.model.x_dim, last["recon"])
        if ratio is not None and ratio > 100:
            err_console.print(
                f"[bold yellow]warning:[/] the fixed σ² = {run.config.model.recon_var:g} is {ratio:.3g} times smaller "
                "than the model's mean squared reconstruction error per dimension, so the reconstruction term and "
                "the NLL are dominated by it. If that is not what you meant, use a larger --recon-var, or "
                "--likelihood gaussian-learned to fit σ² to the data.", highlight=False, soft_wrap=True)
        from vaelab.settings import unreached_free_bits

        floored = unreached_free_bits(run.config.train, run.history.column("kl"))
        if floored is not None:  # audit TR05: --free-bits 1e6 trained an autoencoder without a word
            err_console.print(f"[bold yellow]warning:[/] {floored}", highlight=False, soft_wrap=True)
    if resume and world.is_main:
        _note_sweep_member(Path(out), run.config)
    from vaelab import distributed

    if not world.is_main:  # score this rank's share of the test batches; rank 0 prints, writes, reports
        if not no_eval:
            _run_eval(run.path, dev, k=None, n_test=None, seed=None, world=world)
        distributed.shutdown()
        return
    phase = "evaluation"
    try:
        with _RaiseOnSignal():
            if not no_eval:
                _run_eval(run.path, dev, k=None, n_test=None, seed=None, world=world)
            distributed.shutdown()  # the collectives are over: rank 0 draws the report alone
            phase = "report"
            if not no_report:
                _write_report(run.path)
    except _SignalAgain as sig:
        # Training is complete and saved; only what follows it was cut short (audit: Ctrl-C
        # during the final evaluation or report exited 130 without a word).
        todo = ([f"vaelab eval {run.path}"] if phase == "evaluation" and not no_eval else []) + \
            ([f"vaelab report {run.path}"] if not no_report else [])
        err_console.print(
            f"interrupted ({sig.name}) during the final {phase}: training is complete and {run.path} holds the "
            f"finished run (its last checkpoint); "
            + ("metrics.json was not written; " if phase == "evaluation" and not no_eval else "")
            + ("report.html was not written; " if not no_report else "")
            + "finish with: " + " and ".join(f"`{c}`" for c in todo),
            highlight=False, soft_wrap=True)
        raise typer.Exit(sig.exit_code) from None
    console.print(f"run directory: {run.path}", highlight=False)


def _train_command_line(drop: dict[str, bool], why: str) -> tuple[list[str], list[str]]:
    """This process's `vaelab train` command line as (root options, train arguments), without
    the options in ``drop`` (flag -> whether it takes a value) and without --out / -o.
    ``why``: what needs the command line, for the error when there is none (called in-process)."""
    argv = sys.argv[1:]
    # The root options (--plugin M) come before the command; a value of theirs is never "train"
    # where it stands as the command, so the command is the first "train" not after --plugin.
    at = next((i for i, a in enumerate(argv) if a == "train" and (i == 0 or argv[i - 1] != "--plugin")), None)
    if at is None:  # called in-process (typer's CliRunner, a notebook): no command line to pass
        raise InputError(why)
    drop = {**drop, "--out": True, "-o": True}
    root, args, skip = argv[:at], [], False
    for arg in argv[at + 1:]:  # after the `train` command
        if skip:
            skip = False
            continue
        if arg in drop:
            skip = drop[arg]
            continue
        if not any(arg.startswith(f"{flag}=") for flag in drop):
            args.append(arg)
    return root, args


def _launch_torchrun(nproc: int, out: Path) -> int:
    """Run this very command under ``torchrun --standalone --nproc-per-node N`` (one machine,
    a free port) without --nproc and with the run directory fixed; returns torchrun's exit code."""
    import subprocess

    root, args = _train_command_line({"--nproc": True}, "--nproc re-runs the `vaelab train` command line under "
                                     "torchrun; from Python, start torchrun yourself: torchrun --standalone "
                                     "--nproc-per-node N -m vaelab train ...")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "vaelab", *root, "train", *args, "--out", str(out)]
    console.print(f"launching {nproc} processes: {' '.join(cmd[1:])}", highlight=False, soft_wrap=True)
    return subprocess.call(cmd)


# The options of `vaelab train --slurm` (flag -> takes a value): the job script runs the rest.
_SLURM_TRAIN_OPTIONS = {"--slurm": False, "--nodes": True, "--partition": True, "--time": True,
                        "--cpus-per-task": True, "--gpus-per-node": True, "--dry-run": False, "--nproc": True}


def _submit_train(out: Path, nodes: int, nproc: int, options: Any, *, dry_run: bool, fresh: bool) -> None:
    """`vaelab train --slurm`: the job script in OUT.slurm/ (srun starts torchrun on each node),
    submitted with sbatch, or printed with --dry-run."""
    from vaelab.checkpoint import atomic_write_text
    from vaelab.cluster.slurm import submit, train_script

    out = out.absolute()  # the job runs in its own working directory
    if fresh and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists; choose another --out, --resume to continue the run in it, or "
                         "--overwrite to replace it")
    root, args = _train_command_line(_SLURM_TRAIN_OPTIONS, "--slurm writes the `vaelab train` command line into a "
                                     "job script; from Python, write the script with vaelab.cluster.slurm")
    script = Path(f"{out}.slurm") / "train.sbatch"
    atomic_write_text(script, train_script(out, args, options, nodes=nodes, nproc=nproc, python=sys.executable,
                                           root=root))
    if dry_run:
        console.print(script.read_text(), highlight=False, markup=False, soft_wrap=True)
        console.print(f"wrote {script}; submit it with: sbatch {script}", highlight=False, soft_wrap=True)
        return
    job = submit(script)
    console.print(f"submitted job {job}: {nodes} node(s) x {nproc} process(es) -> {out}\n"
                  f"watch it: squeue -j {job}   log: {script.parent}/{job}.log", highlight=False, soft_wrap=True)


def _family_flag_names(tables: dict[str, dict[str, Any]]) -> list[str]:
    from vaelab.config import flag_name

    return [flag_name(f"model.{name}.{option}") for name, table in tables.items() for option in table]


class _SignalAgain(BaseException):
    """A second SIGINT / SIGTERM while the first one's checkpoint is pending: leave at once.

    A BaseException, so that no ``except Exception`` on the way swallows it; every run file
    is written atomically, so unwinding from anywhere leaves each file whole."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.name, self.exit_code = signal.Signals(signum).name, 128 + signum


class _StopOnSignal:
    """Turn SIGINT / SIGTERM into a request that training checkpoint its current step and
    stop (``requested`` is fit's should_stop); a second signal raises _SignalAgain. The
    previous handlers come back on exit. The library installs no handlers: this is the CLI's
    choice. Outside the main thread (where handlers cannot be set) signals keep their defaults."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return "" if self.signal is None else signal.Signals(self.signal).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention: 130 for SIGINT, 143 for SIGTERM."""
        return 1 if self.signal is None else 128 + self.signal

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise _SignalAgain(signum)
        self.signal = signum

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class _RaiseOnSignal(_StopOnSignal):
    """SIGINT / SIGTERM raise _SignalAgain at once (the work in progress is left: every file is
    written atomically), so that the caller can say what was kept and what finishes the job.
    The handlers are installed and put back as _StopOnSignal's; only the first signal differs."""

    def _handle(self, signum: int, frame: Any) -> None:
        raise _SignalAgain(signum)


def _note_sweep_member(run_dir: Path, config: Any) -> None:
    """A member of a sweep (SWEEP/runs/NAME) resumed alone with another budget, learning rate or
    evaluation no longer matches the sweep's grid: say so, and that the sweep will mark it
    (audit RO13; ``vaelab.sweep.folder.sweep_rows``)."""
    from vaelab.sweep.folder import RUNS_DIR, SweepError, changed_settings, is_sweep_dir, planned_configs

    sweep = run_dir.resolve().parent.parent
    if run_dir.resolve().parent.name != RUNS_DIR or not is_sweep_dir(sweep):
        return
    try:
        planned = planned_configs(sweep).get(run_dir.name)
    except SweepError:  # an unreadable sweep record: `vaelab sweep --resume` says what is wrong with it
        return
    changed = [] if planned is None else changed_settings(config, planned)
    if changed:
        err_console.print(
            f"[bold yellow]note:[/] {run_dir} is member {run_dir.name} of the sweep {sweep}, and now differs from "
            f"the sweep's grid: {', '.join(changed)}. Its results are not comparable with the other members'; "
            f"`vaelab sweep --out {sweep} --resume` and sweep.html mark it as changed", highlight=False,
            soft_wrap=True)


def _error_to_variance_ratio(model_cfg: Any, x_dim: int, recon: float) -> float | None:
    """For a fixed-σ² Gaussian likelihood: the mean squared error per dimension over σ².

    The reconstruction term is -log p(x|z) = ‖x − μ‖² / (2σ²) + D/2 · log(2πσ²), so the squared
    error follows from it. A well-chosen σ² is of the order of that error (ratio ≈ 1, the σ² a
    learned variance would find); None for other likelihoods or a non-finite term.
    """
    import math

    if model_cfg.likelihood != "gaussian" or not math.isfinite(recon):
        return None
    var = model_cfg.recon_var
    squared_error = 2.0 * var * (recon - 0.5 * x_dim * math.log(2.0 * math.pi * var))
    return squared_error / x_dim / var


def _loss_name(cfg: Any) -> str:
    """What the training loss is, in words ("−IWAE bound (k = 4)"): the objective registry's description."""
    from vaelab.models import family
    from vaelab.objectives import describe_loss

    return describe_loss(family(cfg.model.kind), cfg.train)


@app.command("eval", cls=VaelabCommand)
@user_errors
def eval_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    k: int = typer.Option(None, "--k", help="importance samples (default from the run's config: 1000)"),
    n_test: int = typer.Option(None, help="held-out points to draw (toy data)"),
    seed: int = typer.Option(None, help="seed of the evaluation noise"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps"),
    json_out: bool = typer.Option(False, "--json", help="also print the metrics as JSON"),
    save: bool = typer.Option(False, "--save", help="write RUN/metrics.json even when --k / --n-test / --seed "
                              "differ from the run's own evaluation settings"),
    quality_samples: int = typer.Option(None, "--quality-samples", help="image runs: samples for the sample "
                                        "quality (Fréchet distance, precision/recall, density/coverage; default "
                                        "10,000; see docs/quality.md)"),
    no_quality: bool = typer.Option(False, "--no-quality", help="image runs: skip the sample quality"),
    protocol: str = typer.Option(None, "--protocol", help=PROTOCOL_HELP),
) -> None:
    """Evaluate a run on its held-out data. Writes RUN/metrics.json when evaluated with the run's own
    settings (or when it has none yet); with other --k / --n-test / --seed (or a --protocol whose k
    and seed differ) only with --save. Image runs add sample quality against the test split (the first
    time per dataset, a small feature classifier is trained and cached in the data folder)."""
    from vaelab.cli.evaluation import QualityOptions
    from vaelab.config import check_seed_option

    check_seed_option(seed, "--seed")
    metrics = _run_eval(run, pick_device(device), k, n_test, seed, save=save,
                        quality=QualityOptions(quality_samples, no_quality), protocol=protocol)
    if json_out:
        print(json.dumps(metrics))


def _check_output(out: Path, *inputs: Path | str | None) -> None:
    """Refuse, before any work is done, an output path the one file writer must not replace:
    a folder, a special file (FIFO, device), a run's own file, or one of the command's own
    ``inputs`` (-i, a --condition file, the run's files)."""
    from vaelab import checkpoint as ckpt

    ckpt.check_output_path(out, inputs=[Path(p) for p in inputs if p], what="--out")


def _load_model(run: Path, device: str) -> Any:
    from vaelab import checkpoint as ckpt

    return ckpt.load(run, pick_device(device))


# A point farther out than this many times the reference's largest |value| (the training data,
# or draws of the prior) lies far outside anything the model has seen.
FAR_FACTOR = 10.0


def _training_points(r: Any) -> torch.Tensor | None:
    """The run's training points, when they can still be read (a file may have gone): None otherwise."""
    from vaelab.data.registry import load_dataset

    try:
        return load_dataset(r.config.data, "train", expect_dim=r.model.x_dim).x
    except (InputError, OSError):
        return None


def _check_range(values: torch.Tensor, reference: torch.Tensor | None, source: Path, what: str, seen: str) -> None:
    """Warn when ``values`` lie far outside ``reference`` (audit EN12, DE03, PL18: points at 1e30
    and z = 1e30 got ordinary-looking answers with no word). ``seen``: what the reference is."""
    if reference is None or len(reference) == 0:
        return
    limit = FAR_FACTOR * max(float(reference.abs().max()), 1.0)
    peak = float(values.abs().max())
    if peak > limit:
        far = int((values.abs() > limit).any(dim=1).sum())
        err_console.print(
            f"[bold yellow]warning:[/] {source}: {far} of {len(values)} {what} lie far outside {seen} (values up to "
            f"{peak:.3g}; {seen} stays within ±{limit / FAR_FACTOR:.3g}): the model says nothing meaningful about "
            "them, and the results for them only look ordinary", highlight=False, soft_wrap=True)


def _check_pixels(r: Any, x: torch.Tensor, source: Path) -> None:
    """Image runs take grey levels in [0, 1] (audit EN06: raw 0..255 pixels were encoded as if
    they were images; the explorer refuses the same input)."""
    from vaelab.data.registry import is_image_config

    if is_image_config(r.config.data) and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        hint = " (divide by 255)" if float(x.max()) <= 255.0 and float(x.min()) >= 0.0 else ""
        raise InputError(f"{source}: holds values from {float(x.min()):.3g} to {float(x.max()):.3g}; this image "
                         f"run takes grey levels in [0, 1]{hint}")


def _read_matrix(path: Path, width: int, what: str) -> torch.Tensor:
    from vaelab.data.files import load_points

    x = load_points(path, option="--input").x
    if x.shape[1] != width:
        raise InputError(f"{path}: has {x.shape[1]} columns, but this model's {what} has {width} dimensions")
    return x


@app.command(cls=VaelabCommand)
@user_errors
def sample(
    run: Path = typer.Argument(..., help="run directory"),
    n: int = typer.Option(None, "-n", help="number of samples (default 1000, or one per row of a condition file)"),
    out: Path = typer.Option(..., "--out", "-o", help="output file (.npy or .csv)"),
    noise: bool = typer.Option(False, "--noise", help="add observation noise (x ~ p(x|z)) instead of the decoder mean"),
    condition: str = typer.Option(None, "--condition", help="conditional models: a label (name or index), a "
                                  "value such as 2.5, or a file with one condition per sample"),
    seed: int = typer.Option(0, help="seed of the prior draws"),
    temperature: float = typer.Option(None, "--temperature", help="VQ-VAE runs with a trained prior over the codes: "
                                      "draw codes at this temperature (logits / T; below 1 more typical codes; "
                                      "default the run's --vq-temperature)"),
    device: str = typer.Option("auto"),
) -> None:
    """Draw samples from the prior and decode them (given a condition, for conditional models)."""
    from vaelab.config import check_seed_option
    from vaelab.data.files import save_points
    from vaelab.evaluate import generator_for
    from vaelab.sizes import check_decode_fits

    check_seed_option(seed, "--seed")
    _check_output(out, condition)
    if n is not None and n <= 0:
        raise InputError(f"-n must be a positive number of samples, got {n}")
    r = _load_model(run, device)
    if temperature is not None:
        _sampling_temperature(r, run, temperature)
    dev = next(r.model.parameters()).device
    c = _condition_arg(r, condition, None)
    if c is not None and len(c) > 1:
        if n is not None and n != len(c):
            raise InputError(f"-n {n} disagrees with the {len(c)} conditions in {condition}; drop -n to draw "
                             "one sample per condition")
        n = len(c)
    n = 1000 if n is None else n
    check_decode_fits(r.model, n, f"-n {n} samples, decoded at once,")
    if c is not None:
        c = c.expand(n, -1).to(dev)
    g = generator_for(seed, dev, option="--seed")
    x = r.model.sample(n, c, generator=g, noise=noise).cpu().numpy()
    save_points(out, x, [f"x{i + 1}" for i in range(x.shape[1])], inputs=[p for p in (condition,) if p])
    at = "" if temperature is None else f", codes drawn at temperature {temperature:g}"
    console.print(f"wrote {n} samples ({'with noise' if noise else 'decoder mean'}{at}) to {out}", highlight=False)


def _sampling_temperature(r: Any, run: Path, temperature: float) -> None:
    """Set the learned code prior's sampling temperature of a VQ-VAE run, or refuse --temperature
    where it would change nothing: another family, a uniform prior, a prior not trained yet."""
    from vaelab.models.vq import VQVAE

    if not isinstance(r.model, VQVAE) or r.model.code_prior is None:
        what = (f"its family {r.config.model.kind!r} draws z from a fixed prior" if not isinstance(r.model, VQVAE)
                else "its prior over the codes is uniform (--vq-prior uniform)")
        raise InputError(f"--temperature divides the logits of a VQ-VAE's learned prior over the codes, and {run} has "
                         f"none: {what}; drop --temperature")
    if r.config.train.objective != "vq_prior":
        raise InputError(f"{run} is the VQ-VAE's first stage: its prior over the codes is still exactly uniform, which "
                         "no temperature changes. Train the prior first (vaelab train --init-from "
                         f"{run} --objective vq_prior --out {run}/prior) and sample from {run}/prior")
    r.model.set_temperature(temperature)


@app.command(cls=VaelabCommand)
@user_errors
def encode(
    run: Path = typer.Argument(..., help="run directory"),
    input: Path = typer.Option(..., "--input", "-i", help="points to encode (.npy/.npz/.csv, N x D)"),
    out: Path = typer.Option(..., "--out", "-o", help="output (.npy or .csv): means then standard deviations"),
    condition: str = typer.Option(None, "--condition", help="conditional models: one condition for all points, "
                                  "or a file with one per point"),
    device: str = typer.Option("auto"),
) -> None:
    """Encode points: writes the posterior means μ and standard deviations σ (N x 2d)."""
    import torch

    from vaelab.data.files import save_points
    from vaelab.models import has_normal_posterior

    _check_output(out, input, condition)
    r = _load_model(run, device)
    dev = next(r.model.parameters()).device
    x = _read_matrix(input, r.model.x_dim, "data").to(dev)
    _check_pixels(r, x, input)
    _check_range(x.cpu(), _training_points(r), input, "points", "the training data")
    c = _condition_arg(r, condition, len(x))
    c = None if c is None else c.to(dev)
    d = r.model.latent_dim
    with torch.no_grad():
        if has_normal_posterior(r.model):  # μ and σ of q(z|x) = N(μ, diag σ²)
            q_z = r.model.encode(x, c)
            values = torch.cat([q_z.mean, q_z.stddev], dim=1)
            cols = [f"mu{i + 1}" for i in range(d)] + [f"std{i + 1}" for i in range(d)]
        else:
            values = r.model.embed(x, c)
            cols = [f"z{i + 1}" for i in range(d)]
    save_points(out, values.cpu().numpy(), cols, inputs=[p for p in (input, condition) if p])
    console.print(f"wrote {', '.join(cols)} for {len(x)} points to {out}", highlight=False)


@app.command(cls=VaelabCommand)
@user_errors
def decode(
    run: Path = typer.Argument(..., help="run directory"),
    input: Path = typer.Option(..., "--input", "-i", help="latent codes (.npy/.npz/.csv, N x d)"),
    out: Path = typer.Option(..., "--out", "-o", help="output file (.npy or .csv)"),
    noise: bool = typer.Option(False, "--noise", help="draw x ~ p(x|z) instead of the decoder mean"),
    condition: str = typer.Option(None, "--condition", help="conditional models: one condition for all codes, "
                                  "or a file with one per code"),
    seed: int = typer.Option(None, help="seed of the observation noise (with --noise; default 0)"),
    device: str = typer.Option("auto"),
) -> None:
    """Decode latent codes z to data space (given a condition, for conditional models)."""
    import torch

    from vaelab.config import check_seed_option
    from vaelab.data.files import save_points
    from vaelab.distributions import rsample
    from vaelab.evaluate import generator_for
    from vaelab.likelihoods import sample_observation

    check_seed_option(seed, "--seed")
    _check_output(out, input, condition)
    if seed is not None and not noise:
        raise InputError("--seed sets the observation noise, which only --noise draws; add --noise or drop --seed")
    r = _load_model(run, device)
    dev = next(r.model.parameters()).device
    z = _read_matrix(input, r.model.latent_dim, "latent space").to(dev)
    c = _condition_arg(r, condition, len(z))
    c = None if c is None else c.to(dev)
    with torch.no_grad():  # where the prior puts its mass: 1000 seeded draws (its own generator)
        draws = rsample(r.model.prior(None if c is None else c[:1]), (1000,), generator_for(0, dev))
    _check_range(z.cpu(), draws.reshape(-1, z.shape[1]).cpu(), input, "codes", "the prior p(z)")
    with torch.no_grad():
        p_x = r.model.decode(z, c)
        g = generator_for(0 if seed is None else seed, dev, option="--seed")
        x = sample_observation(p_x, g) if noise else p_x.mean
    save_points(out, x.cpu().numpy(), [f"x{i + 1}" for i in range(x.shape[1])],
                inputs=[p for p in (input, condition) if p])
    console.print(f"wrote {len(x)} decoded points to {out}", highlight=False)


@app.command(cls=VaelabCommand)
def datasets(
    data_dir: Path = typer.Option(None, help="root of downloaded image datasets (default: $VAELAB_DATA_DIR, "
                                  "else ~/.cache/vaelab)"),
) -> None:
    """List the built-in datasets, one line each, and where each downloadable one was found: the
    user's data folder, a read-only system folder (such as /usr/share/datasets), or not yet."""
    from vaelab.data.mnist import MNIST_FAMILY, locate_dataset
    from vaelab.data.registry import DATASETS

    width = max(len(n) for n in DATASETS)
    for name, spec in DATASETS.items():
        typer.echo(f"{name:<{width}}  {spec.description}")
        if name in MNIST_FAMILY:  # the files of both splits, system copies checked by MD5
            typer.echo(f"{'':<{width}}    {locate_dataset(name, data_dir=data_dir).describe()}")
    typer.echo(f"{'FILE':<{width}}  your own points: --data path/to/points.npy|.npz|.csv (N rows x D columns)")
    typer.echo(f"{'FOLDER':<{width}}  your own images: --data path/to/folder/ (PNG/JPEG, one subfolder per class "
               "or none; resized to --image-size)")


def _plot_options(dims: str | None, points: str | None, seed: int, n_points: int,
                  data_dims: str | None = None) -> dict[str, Any]:
    """PlotContext options from the plot / report / compare flags (dims are 1-based here)."""
    import torch

    from vaelab.config import check_seed_option

    check_seed_option(seed, "--seed")
    options: dict[str, Any] = {"seed": seed, "n_points": n_points}
    if n_points <= 0:
        raise InputError(f"--n-points must be a positive number of points, got {n_points}")
    if dims is not None:
        pair = _split_numbers(dims, "--dims")
        if pair is None or len(pair) != 2:
            raise InputError(f"--dims takes two latent dimensions like 1,2 (1-based), got {dims!r}")
        options["dims"] = (pair[0] - 1, pair[1] - 1)
    if data_dims is not None:
        chosen = _split_numbers(data_dims, "--data-dims")
        if not chosen:
            raise InputError(f"--data-dims takes data coordinates like 1,3,4 (1-based), got {data_dims!r}")
        options["data_dims"] = tuple(i - 1 for i in chosen)  # checked against the data by PlotContext
    if points is not None:
        try:
            rows = [[float(v) for v in row.split(",")] for row in points.replace(" ", "").split(";") if row]
            options["points"] = torch.tensor(rows, dtype=torch.float32)
        except ValueError:
            raise InputError(f"--points takes data points like '0,3;2.1,-2' (coordinates by commas, points by "
                             f"semicolons), got {points!r}") from None
    return options


def _check_points(run: Path, options: dict[str, Any]) -> None:
    """Warn about --points far outside the training data (audit PL18: '1e30,0' was listed in the
    legend, not drawn, and given an ordinary-looking posterior)."""
    if "points" not in options:
        return
    from vaelab import checkpoint as ckpt

    r = ckpt.load(run)
    if options["points"].shape[1] == r.model.x_dim:  # a wrong width is refused by the figures
        _check_range(options["points"], _training_points(r), Path("--points"), "points", "the training data")


def _write_report(run_dir: Path, **options: Any) -> Path:
    from vaelab.report import write_report

    console.print("drawing figures and the report …", highlight=False)
    path = write_report(run_dir, notify=_notice, **options)
    console.print(f"report: {path}", highlight=False)
    return path


class _FigureHelp(VaelabCommand):
    """A command whose --help ends with the figure names, read from the plot registry only
    when help is shown (the registry imports matplotlib, which other commands do not need)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from vaelab.plots import figure_names

        self.epilog = "Figure names: " + ", ".join(figure_names())
        super().format_help(ctx, formatter)


_FIGURES_HELP = "comma-separated figure names (default: all that apply); an unknown name lists the valid ones"
_DIMS_HELP = "two latent dimensions (1-based) shown by the 2-D latent panels, e.g. 3,4 (default 1,2)"
_DATA_DIMS_HELP = ("data coordinates (1-based) the pair plot `pairs` draws, 2 to 5 of them, e.g. 1,3,4 "
                   "(default: all of them, for 3 to 5 coordinates)")
_POINTS_HELP = "data points whose q(z|x) is drawn, e.g. '0,3;2.1,-2' (default: three typical points)"


@app.command(cls=_FigureHelp)
@user_errors
def plot(
    run: Path = typer.Argument(..., help="run directory"),
    figures: str = typer.Option(None, "--figures", help=_FIGURES_HELP),
    fmt: str = typer.Option("png", "--format", help="png, svg or pdf"),
    dims: str = typer.Option(None, "--dims", help=_DIMS_HELP),
    data_dims: str = typer.Option(None, "--data-dims", help=_DATA_DIMS_HELP),
    points: str = typer.Option(None, "--points", help=_POINTS_HELP),
    n_points: int = typer.Option(2000, "--n-points", help="training points shown in the figures"),
    seed: int = typer.Option(0, help="seed of the samples drawn in the figures"),
) -> None:
    """Draw the run's figures into RUN/figures (see `--figures` for the names)."""
    from vaelab.plots import make_figures, parse_names

    names = parse_names(figures)
    options = _plot_options(dims, points, seed, n_points, data_dims)
    _check_points(run, options)
    paths = make_figures(run, names, fmt, notify=_notice, **options)
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
    if not paths:
        raise InputError("no figure applies to this run with these options; nothing was written")


@app.command(cls=_FigureHelp)
@user_errors
def report(
    run: Path = typer.Argument(..., help="run directory"),
    figures: str = typer.Option(None, "--figures", help=_FIGURES_HELP),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN/report.html)"),
    dims: str = typer.Option(None, "--dims", help=_DIMS_HELP),
    data_dims: str = typer.Option(None, "--data-dims", help=_DATA_DIMS_HELP),
    points: str = typer.Option(None, "--points", help=_POINTS_HELP),
    n_points: int = typer.Option(2000, "--n-points", help="training points shown in the figures"),
    seed: int = typer.Option(0, help="seed of the samples drawn in the figures"),
) -> None:
    """Write RUN/report.html: config, metrics, history, every figure, how to reproduce the run."""
    import torch

    from vaelab.plots import parse_names
    from vaelab.png_worker import spare_cpu
    from vaelab.report import write_report

    # A report spends about as long drawing (matplotlib) as computing (torch). Where torch's
    # threads take every free CPU, one thread fewer gives the PNG worker a CPU of its own, and it
    # draws while the density image is computed: 8.4 s instead of 10.9 s on an idle 2-core
    # machine (`vaelab report RUN`, README Speed). Threads the user chose (OMP_NUM_THREADS) are kept.
    threads = torch.get_num_threads()
    one_fewer = (threads > 1 and "OMP_NUM_THREADS" not in os.environ
                 and not spare_cpu(threads) and spare_cpu(threads - 1))
    if one_fewer:
        torch.set_num_threads(threads - 1)
    options = _plot_options(dims, points, seed, n_points, data_dims)
    _check_points(run, options)
    try:
        path = write_report(run, out=out, names=parse_names(figures), notify=_notice,
                            background=True if one_fewer else None, **options)
    finally:
        torch.set_num_threads(threads)
    console.print(f"report: {path}", highlight=False)


@app.command(cls=_FigureHelp)
@user_errors
def compare(
    runs: list[Path] = typer.Argument(..., help="two or more run directories, or sweep folders (their members)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for compare.html and the figures"),
    figures: str = typer.Option(None, "--figures", help=_FIGURES_HELP),
    dims: str = typer.Option(None, "--dims", help=_DIMS_HELP),
    data_dims: str = typer.Option(None, "--data-dims", help=_DATA_DIMS_HELP),
    n_points: int = typer.Option(2000, "--n-points", help="training points shown in the figures"),
    seed: int = typer.Option(0, help="seed of the samples drawn in the figures"),
) -> None:
    """Put runs side by side: differing options, one metrics table, the same figures in columns."""
    from vaelab.compare import comparison_table, write_comparison
    from vaelab.html import fmt_number
    from vaelab.plots import parse_names
    from vaelab.sweep.folder import expand_run_dirs

    names = parse_names(figures)
    runs = expand_run_dirs(runs)
    labels, rows = comparison_table(runs)
    table = Table(title="runs compared", show_header=True)
    table.add_column("")
    for label in labels:
        table.add_column(label, justify="right")
    for name, values in rows:
        table.add_row(name, *("—" if v is None else fmt_number(v) for v in values))
    console.print(table)
    options = _plot_options(dims, None, seed, n_points, data_dims)
    path = write_comparison(runs, out, names=names, notify=_notice, **options)
    console.print(f"comparison: {path}", highlight=False)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _check_address(host: str, port: int) -> None:
    """Refuse an address explore cannot serve on, naming --host or --port, before the runs load.
    (werkzeug's server reports a bad address itself with only the system's words, such as "Name or
    service not known", and exit code 1: audit EX69.)"""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise InputError(f"--host {host}: not an address of this machine ({getattr(err, 'strerror', None) or err}); "
                         "use 127.0.0.1 (this machine only) or the address of one of its network interfaces") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InputError(f"--port {port} is in use by another program on {host}; choose another --port "
                                 "(--port 0 picks a free one)") from None
            raise InputError(f"--host {host} --port {port}: cannot serve there ({err.strerror or err}); use "
                             "127.0.0.1 (this machine only) or the address of one of its network interfaces") from None


@app.command(cls=VaelabCommand)
@user_errors
def explore(
    runs: list[Path] = typer.Argument(..., help="run directories (several: switch between them on the page)"),
    port: int = typer.Option(8000, "--port", help="port to serve on"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind: 127.0.0.1 serves this machine only; "
                             "any other address lets anyone on the network use it"),
    open_browser: bool = typer.Option(False, "--open", help="open the page in the web browser"),
) -> None:
    """Serve the latent explorer: a local web page to decode, encode and traverse the latent space of runs."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {port}")
    from vaelab.explorer.app import create_app, make_server

    _check_address(host, port)
    local = host in LOCAL_HOSTS
    with console.status(f"loading {len(runs)} run(s)"):
        flask_app = create_app(runs, check_host=local)
    # werkzeug's threaded server (what Flask's app.run uses), bound before the URL is printed, so a
    # port in use is reported instead of a dead link; no debugger, no reloader.
    server = make_server(flask_app, host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/"
    if not local:
        err_console.print(
            f"[bold red]WARNING:[/] binding to {escape(host)} instead of 127.0.0.1: anyone who can reach this "
            "machine on the network can use the explorer and read the runs' held-out data. There is no "
            "password. Use --host 127.0.0.1 unless you mean it.", highlight=False, soft_wrap=True,
        )
    console.print(f"latent explorer for {', '.join(p.name for p in runs)}: {url}  (Ctrl-C stops it)",
                  highlight=False, soft_wrap=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url if host not in ("0.0.0.0", "::") else f"http://127.0.0.1:{server.server_port}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped", highlight=False)
    finally:
        server.server_close()

