"""Train a sweep into a folder of ordinary runs (vaelab.sweep.folder), evaluate them, and
tabulate the results.

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

import contextlib
import math
import signal
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from vaelab import checkpoint as ckpt
from vaelab.config import RunConfig
from vaelab.data.registry import load_dataset
from vaelab.errors import InputError, VaelabError
from vaelab.evaluate import evaluate_run
from vaelab.history import History
from vaelab.models import LatentModel, family
from vaelab.sweep.folder import (
    METRICS_CSV,
    RUNS_DIR,
    SWEEP_FILE,
    MemberRow,
    SweepError,
    load_sweep,
    member_dir,
    member_status,
    metrics_csv,
    prepare_folder,
    read_sweep,
    record,
    sweep_rows,
)
from vaelab.sweep.grid import Grid, GridError, Member, expand
from vaelab.sweep.report import write_member_reports, write_sweep_report
from vaelab.sweep.shards import split_groups

# The engines: stackable members train as one vmapped model (vaelab.train.fit_stack); a member
# that cannot be stacked trains alone with train.fit (vaelab.sweep.solo), same interface.
from vaelab.sweep.solo import fit_members
from vaelab.train import MemberResult, StepInfo, TrainingInterrupted, can_stack, fit_stack, stack_limit
from vaelab.train.run import (
    check_fits,
    check_fits_before_reading,
    check_same_data,
    data_fingerprint,
    heldout_data,
    new_model,
    record_failure,
    resolve_objective_of,
    resolve_paths,
    resume_run,
    start_run,
    training_data,
)


class SweepInterrupted(VaelabError):
    """``should_stop`` stopped a sweep trained in child processes (``jobs`` > 1); every member
    keeps its last checkpoint, and ``resume`` continues them."""


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
    out = Path(out)
    todo = [m for m in members if member_status(member_dir(out, m.name)) in ("new", "partial")]
    locks: list[ckpt.RunLock] = []
    try:
        if todo:
            for m in todo:  # before any image of a folder is read (audit IF15)
                check_fits_before_reading(m.config)
            # Members share their data (grid.py refuses data axes): one training split for all.
            train = training_data(todo[0].config, load_dataset(todo[0].config.data, "train"), device)
            condition = train.condition
            x, c, pixels = train.x, train.c, train.pixels
            heldout = heldout_data(todo[0].config, condition, device)  # the history's heldout_* columns
            for m in todo:  # every member's schedule and size, before any folder is taken
                check_fits(m.config, train)
            models: list[LatentModel] = []
            states: list[ckpt.TrainState | None] = []
            histories: list[History | None] = []
            dirs: list[Path] = []
            for m in todo:
                run_dir = member_dir(out, m.name)
                if member_status(run_dir) == "partial":
                    resumed = resume_run(run_dir, device)
                    locks.append(resumed.lock)
                    check_same_data(run_dir, m.config, train.data)  # the one run preparation's check
                    models.append(resumed.run.model)
                    states.append(resumed.state)
                    histories.append(resumed.history)
                else:
                    model = new_model(m.config, train, device)
                    # empty, or what a crash left of a claim
                    locks.append(start_run(run_dir, model, m.config, condition, overwrite=True,
                                           data=data_fingerprint(m.config, train.data)))
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
                        dynamic_binarization=pixels == "dynamic", should_stop=should_stop, heldout=heldout)
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
                        record_failure(dirs[i], result.error)
        for lock in locks:
            lock.release()
        locks = []
        _evaluate_done(out, members, device)
    finally:
        for lock in locks:
            lock.release()


def _undo_new_folder(out: Path, existed: bool) -> None:
    """Remove what a new sweep wrote into ``out`` when it was refused before training any member
    (a member that cannot be built): sweep.json and the empty runs/ folder, and ``out`` itself
    unless it ``existed``. A member's run directory, once there, keeps everything as it is."""
    runs = out / RUNS_DIR
    if runs.is_dir() and any(runs.iterdir()):
        return
    (out / SWEEP_FILE).unlink(missing_ok=True)
    for folder in (runs, *(() if existed else (out,))):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _evaluate_done(out: Path, members: Sequence[Member], device: str | torch.device) -> None:
    """Evaluate the members that finished training and have no metrics yet (metrics.json)."""
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


def _with_objectives(base: RunConfig, members: Sequence[Member]) -> list[Member]:
    """Each member with the objective it trains with written into its config (config.json then
    says so, and a stack never mixes objectives). Without a named objective a member with β ≠ 1,
    a β schedule or free bits trains the β-ELBO (``objectives.requested_objective``); then so
    does every member of the sweep whose family has an ELBO, β = 1 included (the plain ELBO), so
    that the sweep compares β-VAEs, not a β-VAE with an IWAE run."""
    resolved = [Member(m.name, m.values, resolve_objective_of(m.config)) for m in members]
    named = "objective" in base.train.model_fields_set
    if named or all(r.config.train.objective == m.config.train.objective
                    for r, m in zip(resolved, members, strict=True)):
        return resolved
    out = []
    for m in resolved:
        train = m.config.train
        if train.objective != "elbo" and "elbo" in family(m.config.model.kind).objectives:
            given = set(train.model_fields_set) | {"objective"}
            train = train.model_copy(update={"objective": "elbo"})
            train.__pydantic_fields_set__ = given
        out.append(Member(m.name, m.values, m.config.model_copy(update={"train": train})))
    return out


def run_sweep(
    base: RunConfig, grid: Grid, out: str | Path, *, resume: bool = False, jobs: int = 1,
    device: str | torch.device = "cpu", on_progress: Callable[[str, StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None, member_reports: bool = False,
    shard: tuple[int, int] | None = None,
) -> list[MemberRow]:
    """Train every member of ``grid`` over ``base`` into the sweep folder ``out``; returns the table.

    Every member config is checked before the folder is touched. ``resume`` continues the
    sweep in ``out`` (the same grid and base: see ``load_sweep``). ``jobs`` > 1 trains that
    many groups at once in child processes (``on_progress`` then does not apply; when
    ``should_stop`` returns True the children are stopped and SweepInterrupted is raised:
    ``resume`` continues their members from their last checkpoints). ``on_progress(member name, StepInfo)`` after
    every step; ``should_stop`` as in ``train.fit`` (raises TrainingInterrupted).
    Writes metrics.csv and sweep.html once every member has finished; with ``member_reports``
    also each member's report.html (``vaelab sweep`` without --no-report), which sweep.html's
    rows link to. A member whose training state is damaged is left as it is and marked in the
    table (``MemberRow.note``); the others go on.

    ``shard = (I, N)`` trains only the I-th of N shares of the grid (``vaelab.sweep.shards``),
    with ``resume``'s rules whether or not the folder exists yet: run again, it continues its
    members. A share writes only its members' run directories (and their reports), never the
    table: ``collect_sweep`` writes metrics.csv and sweep.html once every share is done. Returns
    the share's rows.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise GridError(f"--jobs is the number of groups trained at once, a positive integer; got {jobs!r}")
    if jobs > 1 and on_progress is not None:
        raise GridError("on_progress reports the steps of a sweep trained in this process; use jobs = 1 for it")
    out = Path(out)
    base = resolve_paths(base)
    members = _with_objectives(base, expand(base, grid))
    groups = groups_of(members) if shard is None else share_groups(members, shard)
    existed = out.exists()
    fresh = shard is None and not resume and not (existed and (not out.is_dir() or any(out.iterdir())))
    prepare_folder(out, record(base, grid, members), resume, shards=None if shard is None else shard[1])
    try:
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
    except InputError:
        if fresh:  # refused before any member was trained: leave --out as it was, free for the corrected command
            _undo_new_folder(out, existed)
        raise
    if shard is not None:
        names = {m.name for group in groups for m in group}
        if member_reports:
            write_member_reports(out, members=names)
        return [row for row in sweep_rows(out) if row.name in names]
    rows = sweep_rows(out)
    ckpt.atomic_write_text(out / METRICS_CSV, metrics_csv(rows))
    write_sweep_report(out, member_reports=member_reports)
    return rows


def share_groups(members: Sequence[Member], shard: tuple[int, int]) -> list[list[Member]]:
    """The groups of stackable members that share ``shard = (I, N)`` trains (``vaelab.sweep.shards``);
    GridError when the grid has fewer than N groups."""
    return [list(g) for g in split_groups(groups_of(members), shard[1])[shard[0] - 1]]


def check_share(base: RunConfig, grid: Grid, shard: tuple[int, int]) -> None:
    """Refuse a share the grid cannot be split into, before anything is printed or trained."""
    share_groups(_with_objectives(resolve_paths(base), expand(base, grid)), shard)


def start_in_shares(base: RunConfig, grid: Grid, out: str | Path, *, shards: int | None = None,
                    resume: bool = False) -> int:
    """Prepare the sweep folder ``out`` for a sweep trained in shares by other processes (a
    SLURM job array: ``vaelab.cluster``); returns the number of shares.

    ``shards``: default one share per group of stackable members (the most a grid splits
    into), or, with ``resume``, the split the folder was started with. Writes sweep.json
    (checked against it with ``resume``); trains nothing.
    """
    out = Path(out)
    base = resolve_paths(base)
    members = _with_objectives(base, expand(base, grid))
    groups = groups_of(members)
    if shards is None and resume:
        saved = read_sweep(out).get("shards")
        shards = saved if isinstance(saved, int) else None
    count = len(groups) if shards is None else shards
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise GridError(f"--shards is the number of shares to split the sweep into, a positive integer; got {count!r}")
    split_groups(groups, count)  # refuses more shares than groups, before the folder is touched
    prepare_folder(out, record(base, grid, members), resume, shards=count)
    return count


class SweepIncomplete(SweepError):
    """``collect_sweep`` found members that are not trained yet; the message names them and the
    share that trains each."""


def shares_of(out: str | Path) -> dict[str, tuple[int, int]]:
    """Member name -> (I, N): the share that trains it, for a sweep started in shares (else empty)."""
    count = read_sweep(out).get("shards")
    if not isinstance(count, int):
        return {}
    base, grid = load_sweep(out)
    split = split_groups(groups_of(_with_objectives(base, expand(base, grid))), count)
    return {m.name: (i + 1, count) for i, groups in enumerate(split) for group in groups for m in group}


def collect_sweep(out: str | Path, *, member_reports: bool = False) -> list[MemberRow]:
    """Write metrics.csv and sweep.html of a sweep trained in shares (or any sweep folder) once
    every member has finished (done, or diverged: a result too); returns the table.

    Raises SweepIncomplete, writing nothing, when members are not trained yet (not started,
    interrupted, or with a damaged state), naming each and the command that trains it.
    """
    out = Path(out)
    rows = sweep_rows(out)
    waiting = [row for row in rows if row.status in ("new", "partial", "damaged")]
    if waiting:
        shares = shares_of(out)
        words = {"new": "not started", "partial": "interrupted", "damaged": "state damaged"}
        lines = []
        for row in waiting:
            where = f"share {shares[row.name][0]}/{shares[row.name][1]}, " if row.name in shares else ""
            lines.append(f"  {row.name} ({where}{words[row.status]})")
        todo = sorted({shares[row.name] for row in waiting if row.name in shares})
        how = (" and ".join(f"`vaelab sweep --out {out} --resume --shard {i}/{n}`" for i, n in todo) if todo
               else f"`vaelab sweep --out {out} --resume`")
        raise SweepIncomplete(f"{out}: {len(waiting)} of {len(rows)} members are not trained yet, so there is no "
                              "table to collect:\n" + "\n".join(lines) + f"\nwait for their shares to finish, or "
                              f"train them with {how}; then collect again")
    if member_reports:
        write_member_reports(out)
    ckpt.atomic_write_text(out / METRICS_CSV, metrics_csv(rows))
    write_sweep_report(out, member_reports=False)
    return rows  # a member's report changes nothing of its row


