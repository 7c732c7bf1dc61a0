"""Train a sweep into a folder of ordinary runs, evaluate them, and tabulate the results.

A sweep folder::

    SWEEP/sweep.json     the grid, the shared base config and the members (name, swept values)
    SWEEP/runs/<name>/   one run directory per member (vaelab.checkpoint): loadable,
                         evaluable, explorable like any `vaelab train` run
    SWEEP/metrics.csv    one row per member: swept values, status, held-out metrics, seconds
    SWEEP/sweep.html     the sweep's page (vaelab.sweep.report)

Members that can share one stacked model (``can_stack``: same shapes, objective, batches)
train together as a group of at most ``stack_limit`` members (8 for the default 2-D run: a
larger stack leaves the CPU's caches and costs more per member); groups run one after the
other, or in ``jobs`` processes. Each group writes only its members' run directories. A
member that diverges is recorded (its run keeps the failure record, like `vaelab train`)
and the others go on. ``resume``
continues a sweep: finished members are kept as they are (byte for byte), interrupted ones
continue from their last checkpoint, the rest start.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from vaelab import checkpoint as ckpt
from vaelab.config import SECTIONS, RunConfig
from vaelab.errors import VaelabError
from vaelab.history import History
from vaelab.models import LatentModel
from vaelab.sweep.grid import Grid, GridError, Member, expand

# The engines: stackable members train as one vmapped model (vaelab.sweep.stack); a member
# that cannot be stacked trains alone with train.fit (vaelab.sweep.solo), same interface.
from vaelab.sweep.solo import fit_members
from vaelab.sweep.stack import MemberResult, can_stack, fit_stack, stack_limit
from vaelab.train import StepInfo, TrainingInterrupted

SWEEP_FILE = "sweep.json"
METRICS_CSV = "metrics.csv"
REPORT_FILE = "sweep.html"
RUNS_DIR = "runs"
SWEEP_FORMAT = "vaelab-sweep-1"

# The held-out metrics of the table (metrics.json keys), after the swept values and status.
METRIC_COLUMNS = ("elbo", "recon", "kl", "iwae_nll", "active_units", "mutual_info")


class SweepError(GridError):
    """The sweep folder cannot be written or resumed as asked; the message says what to do."""


class SweepInterrupted(VaelabError):
    """``should_stop`` stopped a sweep trained in child processes (``jobs`` > 1); every member
    keeps its last checkpoint, and ``resume`` continues them."""


@dataclass
class MemberRow:
    """A member's line of metrics.csv: swept values, status (done / diverged ...), metrics."""

    name: str
    values: dict[str, Any]
    status: str
    metrics: dict[str, Any]
    seconds: float
    path: Path


def member_dir(out: str | Path, name: str) -> Path:
    return Path(out) / RUNS_DIR / name


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def read_sweep(out: str | Path) -> dict[str, Any]:
    """The content of SWEEP/sweep.json; SweepError naming the file when it cannot be read."""
    path = Path(out) / SWEEP_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{out}: not a sweep folder (no {SWEEP_FILE}); give the --out of a `vaelab sweep`") from None
    except (OSError, json.JSONDecodeError) as err:
        raise SweepError(f"{path}: cannot read the sweep record ({err})") from None
    if not isinstance(data, dict) or data.get("format") != SWEEP_FORMAT:
        raise SweepError(f"{path}: not a vaelab sweep record (format {SWEEP_FORMAT})")
    return data


def load_sweep(out: str | Path) -> tuple[RunConfig, Grid]:
    """The base config and grid a sweep folder was started with (to resume it as it was)."""
    data = read_sweep(out)
    base = RunConfig.from_dict(data["base"], f"{out}/{SWEEP_FILE}")
    # Only the settings the user gave count as given (check_settings reads them), not every
    # field the record spells out.
    given = set(data.get("given", []))
    for section in SECTIONS:
        part = getattr(base, section)
        part.__pydantic_fields_set__ = {f for f in type(part).model_fields if f"{section}.{f}" in given}
    return base, Grid.from_dict(data["grid"])


def member_dirs(out: str | Path) -> list[Path]:
    """The run directories of a sweep's members, in grid order (those that exist)."""
    data = read_sweep(out)
    return [p for m in data["members"] if (p := member_dir(out, m["name"])).is_dir()]


def _record(base: RunConfig, grid: Grid, members: Sequence[Member]) -> dict[str, Any]:
    return {"format": SWEEP_FORMAT, "grid": grid.to_dict(), "base": json.loads(base.to_json()),
            "given": base.user_settings(),
            "members": [{"name": m.name, "values": m.values, "dir": f"{RUNS_DIR}/{m.name}"} for m in members]}


def _prepare_folder(out: Path, record: dict[str, Any], resume: bool) -> None:
    """Refuse an --out that cannot take this sweep (before any training); write sweep.json."""
    if resume:
        saved = read_sweep(out)
        if saved["members"] != record["members"] or saved["base"] != record["base"]:
            names = {m["name"] for m in saved["members"]}
            new = [m["name"] for m in record["members"] if m["name"] not in names]
            what = f"members not in it: {', '.join(new)}" if new else "its shared settings differ"
            raise SweepError(f"{out}: this sweep was started with another grid ({what}); resume it with "
                             "`vaelab sweep --out SWEEP --resume` alone, or start a new one with another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SweepError(f"{out}: already exists and is not empty; choose another --out, or --resume to continue "
                         "the sweep in it")
    try:
        (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SweepError(f"{out}: cannot create the sweep folder ({err.strerror or err})") from None
    ckpt.atomic_write_text(out / SWEEP_FILE, json.dumps(record, indent=2) + "\n")


def member_status(run_dir: Path) -> str:
    """``new`` (nothing trained yet), ``partial`` (a checkpoint to continue), ``done`` or ``diverged``."""
    if not ckpt.is_run_dir(run_dir):
        return "new"
    if (run_dir / ckpt.FAILURE_FILE).is_file():
        return "diverged"
    return "done" if ckpt.load_state(run_dir).complete else "partial"


def groups_of(members: Sequence[Member]) -> list[list[Member]]:
    """Members split into groups that can train as one stacked model (``can_stack``), in grid order,
    each at most ``stack_limit`` members (a larger stack leaves the caches: more time per member);
    a longer run of stackable members is cut into near-equal groups."""
    shapes: list[list[Member]] = []
    for member in members:
        for group in shapes:
            both = [*group, member]
            if can_stack([m.config.model for m in both], [m.config.train for m in both]) is None:
                group.append(member)
                break
        else:
            shapes.append([member])
    groups: list[list[Member]] = []
    for group in shapes:
        limit = stack_limit(group[0].config.model, group[0].config.train)
        parts = math.ceil(len(group) / limit)
        size, extra = divmod(len(group), parts)
        start = 0
        for i in range(parts):
            stop = start + size + (1 if i < extra else 0)
            groups.append(group[start:stop])
            start = stop
    return groups


def train_group(
    out: str | Path, members: Sequence[Member], *, device: str | torch.device = "cpu",
    on_progress: Callable[[str, StepInfo], None] | None = None, should_stop: Callable[[], bool] | None = None,
) -> None:
    """Train one group of stackable members into their run directories, then evaluate them.

    New members start from their seeded initialisation, interrupted ones continue from their
    checkpoint; a diverging member gets a failure record and the others go on. Members
    already done are left alone.
    """
    from vaelab.conditions import fit_condition
    from vaelab.data.pixels import fixed_binarization, resolve_binarize
    from vaelab.data.registry import load_dataset
    from vaelab.models import build_model
    from vaelab.schedules import check_schedule
    from vaelab.sizes import check_model_fits
    from vaelab.train import total_steps

    out = Path(out)
    todo = [m for m in members if member_status(member_dir(out, m.name)) in ("new", "partial")]
    locks: list[ckpt.RunLock] = []
    try:
        if todo:
            config = todo[0].config  # members share their data (grid.py refuses data axes)
            data = load_dataset(config.data, "train")
            pixels = resolve_binarize(config, data)
            x = data.x.to(device)
            if pixels == "fixed":
                x = fixed_binarization(x, "train", config.data.seed)
            condition = (None if config.data.condition is None
                         else fit_condition(config.data.condition, data, config.model.cond_embed))
            c = None if condition is None else condition.tensor(data).to(device)  # (N, cond_dim)
            models: list[LatentModel] = []
            states: list[ckpt.TrainState | None] = []
            histories: list[History | None] = []
            dirs: list[Path] = []
            for m in todo:
                train_cfg, n = m.config.train, len(data)
                check_schedule(train_cfg, math.ceil(n / train_cfg.batch_size), total_steps(train_cfg, n))
                check_model_fits(m.config.model, train_cfg, data.dim, 0 if condition is None else condition.width,
                                 () if condition is None else condition.embed_widths)
            for m in todo:
                run_dir = member_dir(out, m.name)
                if member_status(run_dir) == "partial":
                    locks.append(ckpt.RunLock(run_dir).acquire())
                    ckpt.recover(run_dir)
                    saved = ckpt.load(run_dir, device)
                    state = ckpt.load_state(run_dir)
                    models.append(saved.model)
                    states.append(state)
                    histories.append(History([r for r in saved.history.rows if r["epoch"] <= state.epoch]))
                else:
                    model = build_model(m.config.model, data.dim, 0 if condition is None else condition.width,
                                        seed=m.config.train.seed,
                                        cond_embed=() if condition is None else condition.embed_widths).to(device)
                    locks.append(ckpt.claim(run_dir, overwrite=True))  # empty, or what a crash left of a claim
                    ckpt.write_checkpoint(run_dir, model, m.config, history=History(), state=ckpt.TrainState(),
                                          condition=condition)
                    models.append(model)
                    states.append(None)
                    histories.append(None)
                dirs.append(run_dir)

            def on_checkpoint(i: int, model: LatentModel, history: History, state: ckpt.TrainState) -> None:
                ckpt.write_checkpoint(dirs[i], model, todo[i].config, history=history, state=state,
                                      condition=condition)

            def on_step(i: int, info: StepInfo) -> None:
                if on_progress is not None:
                    on_progress(todo[i].name, info)

            # A stack trains members that stand at the same step; members of one group stand at
            # different steps only when a sweep was cut off between their first checkpoints (or
            # an earlier engine trained them one by one): each step then trains as its own stack.
            batches: dict[int, list[int]] = {}
            for i, begun in enumerate(states):
                batches.setdefault(0 if begun is None else begun.step, []).append(i)
            for idx in batches.values():

                def batch_checkpoint(j: int, m: LatentModel, h: History, s: ckpt.TrainState,
                                     idx: list[int] = idx) -> None:
                    on_checkpoint(idx[j], m, h, s)

                def batch_step(j: int, info: StepInfo, idx: list[int] = idx) -> None:
                    on_step(idx[j], info)

                try:
                    # A group of one member that cannot stack (e.g. nonfinite = "skip") trains with fit.
                    stackable = can_stack([todo[i].config.model for i in idx],
                                          [todo[i].config.train for i in idx]) is None
                    results: list[MemberResult] = (fit_stack if stackable else fit_members)(
                        [models[i] for i in idx], x, [todo[i].config.train for i in idx], c=c,
                        states=[states[i] for i in idx], histories=[histories[i] for i in idx],
                        on_checkpoint=batch_checkpoint, on_step=batch_step,
                        dynamic_binarization=pixels == "dynamic", should_stop=should_stop)
                except TrainingInterrupted:
                    # Members that finished before the interruption are evaluated now, so that a
                    # resumed sweep leaves their folders exactly as they are.
                    for lock in locks:
                        lock.release()
                    locks = []
                    _evaluate_done(out, members, device)
                    raise
                for i, result in zip(idx, results, strict=True):
                    if result.error is not None:  # as train_run records it: the history and what went wrong
                        err = result.error
                        ckpt.write_history(dirs[i], err.history)
                        ckpt.write_json(dirs[i] / ckpt.FAILURE_FILE, {"step": err.step, "epoch": err.epoch,
                                                                      "term": err.term, "message": str(err)})
        for lock in locks:
            lock.release()
        locks = []
        _evaluate_done(out, members, device)
    finally:
        for lock in locks:
            lock.release()


def _evaluate_done(out: Path, members: Sequence[Member], device: str | torch.device) -> None:
    """Evaluate the members that finished training and have no metrics yet (metrics.json)."""
    from vaelab.evaluate import evaluate_run

    for m in members:
        run_dir = member_dir(out, m.name)
        if member_status(run_dir) == "done":
            run = ckpt.load(run_dir, device)
            if not run.metrics:
                evaluate_run(run, write=True)


def _ignore_interrupts() -> None:
    """In a child process of ``jobs`` > 1: Ctrl-C reaches the whole process group, but the
    parent decides (``should_stop``) and stops the children itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _group_worker(out: str, configs: list[str], names: list[str], values: list[dict[str, Any]], device: str,
                  threads: int) -> None:
    """A group trained in a child process (``jobs`` > 1): configs travel as JSON."""
    torch.set_num_threads(threads)  # the child's own setting: the jobs share the cores
    members = [Member(n, v, RunConfig.model_validate_json(cfg)) for n, v, cfg in zip(names, values, configs,
                                                                                       strict=True)]
    train_group(out, members, device=device)


def run_sweep(
    base: RunConfig, grid: Grid, out: str | Path, *, resume: bool = False, jobs: int = 1,
    device: str | torch.device = "cpu", on_progress: Callable[[str, StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[MemberRow]:
    """Train every member of ``grid`` over ``base`` into the sweep folder ``out``; returns the table.

    Every member config is checked before the folder is touched. ``resume`` continues the
    sweep in ``out`` (the same grid and base: see ``load_sweep``). ``jobs`` > 1 trains that
    many groups at once in child processes (``on_progress`` then does not apply; when
    ``should_stop`` returns True the children are stopped and SweepInterrupted is raised:
    ``resume`` continues their members from their last checkpoints). ``on_progress(member name, StepInfo)`` after
    every step; ``should_stop`` as in ``train.fit`` (raises TrainingInterrupted).
    Writes metrics.csv and sweep.html once every member has finished.
    """
    from vaelab.sweep.report import write_sweep_report
    from vaelab.train import resolve_paths

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise GridError(f"--jobs is the number of groups trained at once, a positive integer; got {jobs!r}")
    if jobs > 1 and on_progress is not None:
        raise GridError("on_progress reports the steps of a sweep trained in this process; use jobs = 1 for it")
    out = Path(out)
    base = resolve_paths(base)
    members = expand(base, grid)
    _prepare_folder(out, _record(base, grid, members), resume)
    groups = groups_of(members)
    if jobs == 1 or len(groups) == 1:
        for group in groups:
            train_group(out, group, device=device, on_progress=on_progress, should_stop=should_stop)
    else:
        threads = max(1, torch.get_num_threads() // min(jobs, len(groups)))
        pool = get_context("spawn").Pool(min(jobs, len(groups)), initializer=_ignore_interrupts)
        try:
            pending = [pool.apply_async(_group_worker, (str(out), [m.config.to_json() for m in g],
                                                        [m.name for m in g], [m.values for m in g], str(device),
                                                        threads)) for g in groups]
            while pending:
                pending[0].wait(0.2)
                for job in [j for j in pending if j.ready()]:
                    job.get()  # a child's error is raised here, with its message
                    pending.remove(job)
                if pending and should_stop is not None and should_stop():
                    pool.terminate()  # every checkpoint is written atomically: each member keeps its last one
                    raise SweepInterrupted(
                        f"sweep interrupted: {len(pending)} group(s) stopped at their last checkpoint; "
                        f"resume with: vaelab sweep --out {out} --resume")
            pool.close()
        finally:
            pool.terminate()
            pool.join()
    rows = sweep_rows(out)
    ckpt.atomic_write_text(out / METRICS_CSV, metrics_csv(rows))
    write_sweep_report(out)
    return rows


def sweep_rows(out: str | Path) -> list[MemberRow]:
    """The table of a sweep folder as it stands: one row per member, in grid order."""
    rows = []
    for entry in read_sweep(out)["members"]:
        run_dir = member_dir(out, entry["name"])
        status = member_status(run_dir)
        metrics: dict[str, Any] = {}
        seconds = math.nan
        if status != "new":
            run = ckpt.load(run_dir)
            last = run.history.last
            seconds = last["seconds"] if last else math.nan
            if status == "done":
                metrics = run.metrics
            elif status == "diverged" and run.failure is not None:
                status = f"diverged at step {run.failure.get('step')} ({run.failure.get('term')})"
        rows.append(MemberRow(entry["name"], entry["values"], status, metrics, seconds, run_dir))
    return rows


def table_columns(rows: Sequence[MemberRow]) -> list[str]:
    """The columns of the metrics table: name, the swept settings' names, status, metrics, seconds."""
    axes = list(rows[0].values) if rows else []
    return ["name", *(a.split(".", 1)[1] for a in axes), "status", *METRIC_COLUMNS, "seconds"]


def table_values(row: MemberRow) -> list[Any]:
    return [row.name, *row.values.values(), row.status, *(row.metrics.get(k) for k in METRIC_COLUMNS), row.seconds]


def metrics_csv(rows: Sequence[MemberRow]) -> str:
    """metrics.csv: a header, then one line per member (empty cells: a metric the member lacks)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table_columns(rows))
    for row in rows:
        writer.writerow(["" if v is None else ("-".join(map(str, v)) if isinstance(v, list) else v)
                         for v in table_values(row)])
    return buf.getvalue()


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories with every sweep folder among them replaced by its members' runs (grid order)."""
    expanded: list[Path] = []
    for path in paths:
        expanded.extend(member_dirs(path) if is_sweep_dir(path) else [Path(path)])
    return expanded
