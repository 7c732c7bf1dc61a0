"""``vaelab sweep``: train a grid of configurations into a sweep folder and print its table."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperOption

from vaelab.cli import app
from vaelab.cli.commands import (
    _base_config,
    _grey_levels,
    _is_file_arg,
    _SignalAgain,
    _StopOnSignal,
    check_data_arg,
    preset_note,
)
from vaelab.cli.common import (
    CLUSTER,
    DATA,
    MODEL,
    RUN,
    SLURM_CPUS,
    SLURM_DRY_RUN,
    SLURM_PARTITION,
    SLURM_TIME,
    TRAINING,
    VaelabCommand,
    add_defaults,
    config_flags,
    pick_device,
    refuse_without_slurm,
    user_errors,
    vaelab_command,
)
from vaelab.cli.console import MofNOnceKnown, _fetch_with_progress, console, err_console
from vaelab.presets import PRESETS

if TYPE_CHECKING:
    from vaelab.cluster.slurm import SlurmOptions

# One line per paragraph (typer re-wraps them); "\\[" keeps rich from reading [sweep] as markup.
SWEEP_HELP = (
    "Train every combination of the given values and compare them in one folder.\n\n"
    "Give any `vaelab train` flag as a comma list (list-valued ones like --hidden separated by /): "
    "--beta 0.25,0.5,1,2,4 --recon-var 0.01,0.1,1 --latent-dim 1,2 --seeds 3. A flag with one value applies "
    "to every member. The grid can also come from a \\[sweep] table of --config: seeds = N, "
    "\\[sweep.train] beta = [...], \\[sweep.model] latent_dim = [...].\n\n"
    "Writes OUT/runs/<member>/ (ordinary runs, each with its report.html unless --no-report: vaelab eval / "
    "report / explore / compare take them), OUT/metrics.csv, OUT/sweep.html (its rows link to the members' "
    "reports) and OUT/sweep.json. Members that share shapes train as one group; "
    "--jobs N trains N groups at once. --resume continues an interrupted sweep."
)


class _SweepHelp(VaelabCommand):
    """`vaelab sweep --help`: its own options and every `vaelab train` option a grid can take
    (a config field's flag), in the panels of `vaelab train --help`, with the same defaults.

    The train options are copies of the train command's, for help only: the sweep reads them
    itself from the words typer leaves over (``vaelab.sweep.grid.parse_flags``)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if not getattr(self, "_defaults_added", False):
            self.help = f"{self.help}\n\n{preset_note()}"
            self.params += _train_options(ctx)
        add_defaults(self, ctx, _sweep_defaults())
        super().format_help(ctx, formatter)


def _train_options(ctx: Any) -> list[Any]:
    """Help-only copies of the `vaelab train` options that a sweep takes: those of a grid with a
    comma list of values (a flag: true,false), those of the data and the evaluation, which every
    member shares, with one value."""
    group = ctx.find_root().command
    train = group.get_command(ctx, "train") if isinstance(group, typer.core.TyperGroup) else None
    if train is None:
        return []
    own = {opt for param in ctx.command.params for opt in param.opts}
    fields = config_flags()
    shown = []
    for param in train.params:
        flag = max(param.opts, key=len) if param.opts else None
        if not isinstance(param, TyperOption) or flag not in fields or flag in own:
            continue
        shown.append(copy.copy(param))
        if fields[flag].split(".")[0] in SHARED_SECTIONS:
            continue
        shown[-1].secondary_opts = []
        shown[-1].metavar = "true|false,..." if param.is_flag else f"{param.display_type(ctx)},..."
    return shown


# The settings every member shares (vaelab.sweep.grid refuses several values of them).
SHARED_SECTIONS = ("data", "eval")


def _sweep_defaults() -> dict[str, str]:
    from vaelab.presets import DEFAULT_IMAGE_PRESET

    return {"--config": "none", "--preset": f"none; image data {DEFAULT_IMAGE_PRESET}",
            "--seeds": "1: the --seed alone", "--shards": "one per group of members that train as one stack"}


@app.command(help=SWEEP_HELP, cls=_SweepHelp,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def sweep(
    ctx: typer.Context,
    out: Path = typer.Option(None, "--out", "-o", help="the sweep folder (new, or the one to --resume)",
                             rich_help_panel=RUN),
    data: str = typer.Option(None, "--data", help="dataset name (see `vaelab datasets`) or a .npy/.npz/.csv file",
                             rich_help_panel=DATA),
    seeds: int = typer.Option(None, "--seeds", help="train every configuration with N seeds: seed ... seed + N - 1",
                              rich_help_panel=TRAINING),
    jobs: int = typer.Option(1, "--jobs", help="groups of members trained at once, in separate processes",
                             rich_help_panel=RUN),
    config: Path = typer.Option(None, "--config",
                                help="TOML file with \\[data] \\[model] \\[train] \\[eval] and \\[sweep] tables",
                                rich_help_panel=RUN),
    preset: str = typer.Option(None, help=f"image preset: {', '.join(PRESETS)}",
                               rich_help_panel=MODEL),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps", rich_help_panel=RUN),
    resume: bool = typer.Option(False, "--resume", help="continue the sweep in --out: finished members are kept",
                                rich_help_panel=RUN),
    no_report: bool = typer.Option(False, "--no-report", help="skip each member's report.html (sweep.html, which "
                                   "links to them, is always written)", rich_help_panel=RUN),
    shard: str = typer.Option(None, "--shard", metavar="I/N", help="train only the I-th of N shares of the grid "
                              "(counted from 1) into --out, a folder every share sees; run again, it continues; "
                              "then --collect", rich_help_panel=CLUSTER),
    collect: Path = typer.Option(None, "--collect", metavar="SWEEP", help="write the table and sweep.html of a "
                                 "sweep trained in shares once every member is done; says which are not",
                                 rich_help_panel=CLUSTER),
    slurm: bool = typer.Option(False, "--slurm", help="write a SLURM job array (one task per share) into "
                               "OUT/slurm/ and submit it with sbatch", rich_help_panel=CLUSTER),
    shards: int = typer.Option(None, "--shards", help="with --slurm: the number of shares (array tasks)",
                               rich_help_panel=CLUSTER),
    partition: str = SLURM_PARTITION,
    time_limit: str = SLURM_TIME,
    cpus_per_task: int = SLURM_CPUS,
    gpus_per_task: int = typer.Option(None, "--gpus-per-task", help="with --slurm: GPUs per task",
                                      rich_help_panel=CLUSTER),
    array_limit: int = typer.Option(None, "--array-limit", help="with --slurm: at most M tasks at once",
                                    rich_help_panel=CLUSTER),
    dry_run: bool = SLURM_DRY_RUN,
) -> None:
    from vaelab.cluster.slurm import SlurmOptions
    from vaelab.config import absolute_path
    from vaelab.errors import InputError
    from vaelab.sweep.folder import load_sweep
    from vaelab.sweep.grid import expand, make_grid, parse_flags, read_sweep_toml, sweep_table
    from vaelab.sweep.run import SweepInterrupted, check_share, run_sweep
    from vaelab.sweep.shards import parse_shard
    from vaelab.train import TrainingInterrupted

    lists = parse_flags(ctx.args)  # the grid's flags are checked before anything else is read
    refuse_without_slurm(slurm, {"--shards": shards, "--partition": partition, "--time": time_limit,
                                 "--cpus-per-task": cpus_per_task, "--gpus-per-task": gpus_per_task,
                                 "--array-limit": array_limit, "--dry-run": dry_run})
    if collect is not None:
        if (out is not None or lists or data is not None or config is not None or preset is not None
                or seeds is not None or resume or shard is not None or slurm or jobs != 1):
            raise InputError("--collect SWEEP builds the table of the sweep in SWEEP from its members as they are; "
                             "give it alone (optionally with --no-report)")
        _collect(collect, no_report)
        return
    if out is None:
        raise InputError("give --out, the sweep's folder (or --collect SWEEP to tabulate a sweep trained in shares)")
    if slurm and shard is not None:
        raise InputError("--slurm gives every array task its own share (--shard $SLURM_ARRAY_TASK_ID/N): drop "
                         "--shard, and give --shards N for the number of shares")
    share = None if shard is None else parse_shard(shard)
    check_data_arg(data, out)
    if resume:
        if lists or data is not None or config is not None or preset is not None or seeds is not None:
            raise InputError("--resume continues the sweep in --out with its own grid and settings; give only "
                             "--out, --resume and optionally --jobs / --device / --no-report / --shard / --slurm")
        base, grid = load_sweep(out)
    else:
        table: dict[str, Any] = {}
        if config is not None:
            rest, table = read_sweep_toml(config)
            base = _base_config(None, preset, None).with_overrides(rest, source=str(config))
        else:
            base = _base_config(None, preset, data)
        if data is not None:
            over = ({"path": absolute_path(data)} if _is_file_arg(data)
                    else {"name": data, "path": None})
            base = base.with_overrides({"data": over})
            if _is_file_arg(data):
                base.data.__pydantic_fields_set__.discard("name")
        toml_lists, toml_seeds = sweep_table(table, f"{config} [sweep]")
        base, grid = make_grid(base, {**toml_lists, **lists}, seeds=seeds if seeds is not None else toml_seeds)
        base = _grey_levels(base)
        _fetch_with_progress(base.data)
    expand(base, grid)  # every member checked (run_sweep checks again) before the first line is printed
    if share is not None:
        check_share(base, grid, share)
    if slurm:
        _submit_array(base, grid, out, resume=resume, shards=shards, jobs=jobs, device=device, no_report=no_report,
                      options=SlurmOptions(partition=partition, time=time_limit, cpus_per_task=cpus_per_task,
                                           gpus_per_task=gpus_per_task, array_limit=array_limit), dry_run=dry_run)
        return
    dev = pick_device(device)
    console.print(f"sweep of {grid.size} members -> {out} (device {dev})"
                  + ("" if share is None else f"; this process trains share {share[0]}/{share[1]}"), highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNOnceKnown(), TimeElapsedColumn(),
                  console=console, disable=not console.is_terminal and bool(os.environ.get("CI"))) as progress:
        task = progress.add_task("loading data, building the members …", total=None)

        def on_progress(name: str, info: Any) -> None:
            if info.step == 1 or info.step % 20 == 0 or info.step == info.total_steps:
                progress.update(task, total=info.total_steps, completed=info.step,
                                description=f"{name}: epoch {info.epoch} loss {info.loss:.3f}")

        try:
            with _StopOnSignal() as stop:
                try:
                    rows = run_sweep(base, grid, out, resume=resume, jobs=jobs, device=dev,
                                     on_progress=on_progress if jobs == 1 else None,
                                     should_stop=stop.requested, member_reports=not no_report, shard=share)
                except TrainingInterrupted as err:
                    progress.stop()
                    err_console.print(f"interrupted ({stop.name}) at step {err.step}: the member in training saved "
                                      f"a checkpoint\nresume with: {vaelab_command()} sweep --out {out} --resume"
                                      f"{_shard_words(share)}", highlight=False, soft_wrap=True)
                    raise typer.Exit(stop.exit_code) from None
                except SweepInterrupted as err:  # --jobs: the child processes were stopped
                    progress.stop()
                    err_console.print(f"interrupted ({stop.name}); {err}", highlight=False, soft_wrap=True)
                    raise typer.Exit(stop.exit_code) from None
        except _SignalAgain as again:
            progress.stop()
            err_console.print(f"stopped at once ({again.name} again); resume with: {vaelab_command()} sweep "
                              f"--out {out} --resume{_shard_words(share)}", highlight=False, soft_wrap=True)
            raise typer.Exit(again.exit_code) from None
    _print_table(rows, f"sweep {out}" if share is None else f"sweep {out}, share {share[0]}/{share[1]}")
    reports = "" if no_report else ", runs/*/report.html"
    if share is not None:
        console.print(f"share {share[0]}/{share[1]} done ({len(rows)} members); once every share is done: "
                      f"{vaelab_command()} sweep --collect {out}", highlight=False, soft_wrap=True)
    else:
        console.print(f"sweep folder: {out} (metrics.csv, sweep.html{reports}, runs/)", highlight=False)
    untrained = [row.name for row in rows if row.status == "damaged"]
    if untrained:  # the others are done; these could not be trained, so the sweep is not complete
        err_console.print(f"error: {len(untrained)} of {len(rows)} members could not be trained "
                          f"({', '.join(untrained)}); see the warnings above", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    _say_diverged(rows)


def _say_diverged(rows: Any) -> None:
    """Name the members that diverged (a result of the sweep, in the table); when every member
    did, nothing was learned: exit 1 with what usually causes it."""
    diverged = [row for row in rows if row.status.startswith("diverged")]
    if not diverged:
        return
    failure = f"{diverged[0].path}/failure.json"
    if len(diverged) < len(rows):
        err_console.print(f"[bold yellow]warning:[/] {len(diverged)} of {len(rows)} members diverged "
                          f"({', '.join(r.name for r in diverged)}); their rows say at which step, and each "
                          f"member's failure.json what went non-finite (e.g. {failure})", highlight=False,
                          soft_wrap=True)
        return
    err_console.print(f"error: every member diverged (the first at {diverged[0].status.removeprefix('diverged ')}); "
                      f"see {failure}. Data on a large scale (values in the hundreds) or a large --lr usually cause "
                      "it: standardize the data or lower --lr, and add --grad-clip 1", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _shard_words(share: tuple[int, int] | None) -> str:
    return "" if share is None else f" --shard {share[0]}/{share[1]}"


def _print_table(rows: Any, title: str) -> None:
    """The sweep's table on the console, then the notes of its members (changed, damaged)."""
    from vaelab.html import fmt_number
    from vaelab.sweep.folder import table_columns, table_values

    # The member's name repeats its swept values: the console table leaves it out for width,
    # and folds (never cuts) what does not fit; metrics.csv has every column.
    result = Table(title=title, show_header=True)
    for column in table_columns(rows)[1:]:
        result.add_column(column, justify="left" if column == "status" else "right", overflow="fold")
    for row in rows:
        result.add_row(*("—" if v is None else fmt_number(v) for v in table_values(row)[1:]))
    console.print(result)
    for row in rows:  # a member changed outside the sweep, or with a damaged state (audit RO13, SW30)
        if row.note:
            err_console.print(f"[bold yellow]warning:[/] {row.note}", highlight=False, soft_wrap=True)


def _collect(out: Path, no_report: bool) -> None:
    """`vaelab sweep --collect SWEEP`: the table and sweep.html once every share is done."""
    from vaelab.sweep.run import collect_sweep

    rows = collect_sweep(out, member_reports=not no_report)
    _print_table(rows, f"sweep {out}")
    reports = "" if no_report else ", runs/*/report.html"
    console.print(f"sweep folder: {out} (metrics.csv, sweep.html{reports}, runs/)", highlight=False)
    _say_diverged(rows)


def _submit_array(base: Any, grid: Any, out: Path, *, resume: bool, shards: int | None, jobs: int, device: str,
                  no_report: bool, options: SlurmOptions, dry_run: bool) -> None:
    """`vaelab sweep … --slurm`: the sweep folder and its record, the job-array script in
    OUT/slurm/, and sbatch (or, with --dry-run, the script printed)."""
    import sys

    from vaelab.checkpoint import atomic_write_text
    from vaelab.cluster.slurm import submit, sweep_array_script
    from vaelab.sweep.run import start_in_shares

    out = out.absolute()  # the tasks run in their own working directories
    count = start_in_shares(base, grid, out, shards=shards, resume=resume)
    extra = [*(["--jobs", str(jobs)] if jobs != 1 else []), *(["--device", device] if device != "auto" else []),
             *(["--no-report"] if no_report else [])]
    script = out / "slurm" / "sweep.sbatch"
    atomic_write_text(script, sweep_array_script(out, count, options, python=sys.executable, extra=extra))
    collect = f"{vaelab_command()} sweep --collect {out}"
    if dry_run:
        console.print(script.read_text(), highlight=False, markup=False, soft_wrap=True)
        console.print(f"wrote {script} ({count} array tasks); submit it with: sbatch {script}\n"
                      f"when every task has ended: {collect}", highlight=False, soft_wrap=True)
        return
    job = submit(script)
    console.print(f"submitted job array {job}: {count} tasks, one per share of the sweep ({script})\n"
                  f"watch it: squeue -j {job}   logs: {out}/slurm/{job}_*.log\n"
                  f"when every task has ended: {collect}", highlight=False, soft_wrap=True)
