"""A sweep folder: its record, its members' run directories and its table.

    SWEEP/sweep.json     the grid, the shared base config and the members (name, swept values)
    SWEEP/runs/<name>/   one run directory per member (vaelab.checkpoint): loadable,
                         evaluable, explorable like any `vaelab train` run
    SWEEP/metrics.csv    one row per member: swept values, status, held-out metrics, seconds
    SWEEP/sweep.html     the sweep's page (vaelab.sweep.report)

A member is an ordinary run, so it can be changed outside the sweep: `vaelab train --out
SWEEP/runs/NAME --resume --epochs 5` gives it a budget the grid does not have. The table
then marks the member as changed, naming each setting that differs from the grid (audit
RO13), and a member whose training state is damaged is reported beside the others, which go
on (audit SW30): a finished member needs no state, an unfinished one is left untrained.

``vaelab.sweep.run`` trains into it; ``vaelab.sweep.report`` and ``vaelab compare`` read it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab import checkpoint as ckpt
from vaelab.config import SECTIONS, RunConfig, cli_flag
from vaelab.errors import VaelabWarning
from vaelab.sweep.grid import Grid, GridError, Member, expand

SWEEP_FILE = "sweep.json"


METRICS_CSV = "metrics.csv"


REPORT_FILE = "sweep.html"


RUNS_DIR = "runs"


SWEEP_FORMAT = "vaelab-sweep-1"


# The held-out metrics of the table (metrics.json keys), after the swept values and status.
METRIC_COLUMNS = ("elbo", "recon", "kl", "iwae_nll", "active_units", "mutual_info")


class SweepError(GridError):
    """The sweep folder cannot be written or resumed as asked; the message says what to do."""


@dataclass
class MemberRow:
    """A member's line of metrics.csv: swept values, status (done / diverged ...), metrics.

    ``remark``: a few words shown after the status (``changed: --epochs 5, grid 3``; ``state.pt
    damaged``); ``note``: what that means and what to do, in full (printed under the table)."""

    name: str
    values: dict[str, Any]
    status: str
    metrics: dict[str, Any]
    seconds: float
    path: Path
    remark: str = ""
    note: str = ""

    @property
    def shown_status(self) -> str:
        return f"{self.status} ({self.remark})" if self.remark else self.status


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


def record(base: RunConfig, grid: Grid, members: Sequence[Member]) -> dict[str, Any]:
    return {"format": SWEEP_FORMAT, "grid": grid.to_dict(), "base": json.loads(base.to_json()),
            "given": base.user_settings(),
            "members": [{"name": m.name, "values": m.values, "dir": f"{RUNS_DIR}/{m.name}"} for m in members]}


def prepare_folder(out: Path, record: dict[str, Any], resume: bool, *, shards: int | None = None) -> None:
    """Refuse an --out that cannot take this sweep (before any training); write sweep.json.

    ``shards``: this process trains one of that many shares (``vaelab.sweep.shards``). The
    first share to come creates the folder and sweep.json (atomically: exactly one share's
    record lands, whatever their timing); every other share, and a share resumed, checks its
    own record against it.
    """
    if shards is not None:
        record = {**record, "shards": shards}
    if resume or (shards is not None and (out / SWEEP_FILE).exists()):
        _check_record(out, record, shards)
        return
    if out.exists() and not out.is_dir():  # (audit SW26: was "already exists and is not empty")
        raise SweepError(f"{out}: is a file, not a folder; --out names the sweep's folder: choose another --out")
    # A share's temporary sweep.json (.sweep.json.*) may be there a moment before the record.
    if out.exists() and any(not p.name.startswith(f".{SWEEP_FILE}.") for p in out.iterdir()):
        raise SweepError(f"{out}: already exists and is not empty; choose another --out, or --resume to continue "
                         "the sweep in it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SweepError(f"{out}: cannot create the sweep folder ({err.strerror or err})") from None
    text = json.dumps(record, indent=2) + "\n"
    if shards is None:
        ckpt.atomic_write_text(out / SWEEP_FILE, text)
    elif not ckpt.atomic_create_text(out / SWEEP_FILE, text):  # another share was first
        _check_record(out, record, shards)
    try:
        (out / RUNS_DIR).mkdir(exist_ok=True)
    except OSError as err:
        raise SweepError(f"{out}: cannot create the sweep folder ({err.strerror or err})") from None


def _check_record(out: Path, record: dict[str, Any], shards: int | None) -> None:
    """Refuse to go on in a sweep folder whose sweep.json was written for another sweep."""
    saved = read_sweep(out)
    if saved["members"] != record["members"] or saved["base"] != record["base"]:
        names = {m["name"] for m in saved["members"]}
        new = [m["name"] for m in record["members"] if m["name"] not in names]
        what = f"members not in it: {', '.join(new)}" if new else "its shared settings differ"
        how = ("give every share the same grid and settings (or `--resume --shard I/N`, which reads them from "
               "the folder)" if shards is not None else "resume it with `vaelab sweep --out SWEEP --resume` alone")
        raise SweepError(f"{out}: this sweep was started with another grid ({what}); {how}, or start a new one "
                         "with another --out")
    split = saved.get("shards")
    if shards is not None and split is not None and split != shards:
        raise SweepError(f"{out}: this sweep is split into {split} shares, not {shards}: give --shard I/{split} "
                         "(a share of another split would train members of other shares)")
    (out / RUNS_DIR).mkdir(exist_ok=True)


def _state_problem(run_dir: Path) -> tuple[ckpt.TrainState | None, str | None]:
    """The member's training state, or None and why it cannot be read (a damaged state.pt)."""
    try:
        return ckpt.load_state(run_dir), None
    except ckpt.RunDirError as err:
        return None, str(err)


def _finished(run_dir: Path) -> bool:
    """Whether the history of a run reaches its budget: what says a member finished training
    when its state.pt is lost (the state is only needed to go on)."""
    try:
        run = ckpt.load(run_dir)
    except ckpt.RunDirError:
        return False
    last, train = run.history.last, run.config.train
    if last is None:
        return False
    return last["step"] >= train.steps if train.steps is not None else last["epoch"] >= train.epochs


def member_status(run_dir: Path) -> str:
    """``new`` (nothing trained yet), ``partial`` (a checkpoint to continue), ``done``,
    ``diverged``, or ``damaged``: an unfinished member whose training state cannot be read
    (a finished one stays ``done``: it needs no state)."""
    if not ckpt.is_run_dir(run_dir):
        return "new"
    if (run_dir / ckpt.FAILURE_FILE).is_file():
        return "diverged"
    state, _ = _state_problem(run_dir)
    if state is None:
        return "done" if _finished(run_dir) else "damaged"
    return "done" if state.complete else "partial"


def changed_settings(config: RunConfig, planned: RunConfig) -> list[str]:
    """The settings of a member's run ``config`` that differ from the grid's ``planned`` config:
    those a resumed run may change (``train.run.RESUMABLE``: budget, learning rate, evaluation),
    each as "--epochs 5 (grid: 3)"; empty when the member is as the grid made it."""
    from vaelab.train.run import RESUMABLE

    changed = []
    for dotted in sorted(RESUMABLE):
        section, field = dotted.split(".", 1)
        now, was = getattr(getattr(config, section), field), getattr(getattr(planned, section), field)
        if now != was:
            changed.append(f"{cli_flag(dotted) or dotted} {_word(now)} (grid: {_word(was)})")
    return changed


def _word(value: Any) -> str:
    return "unset" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def planned_configs(out: str | Path) -> dict[str, RunConfig]:
    """Each member's config as the sweep's grid makes it (by name)."""
    base, grid = load_sweep(out)
    return {m.name: m.config for m in expand(base, grid)}


def sweep_rows(out: str | Path) -> list[MemberRow]:
    """The table of a sweep folder as it stands: one row per member, in grid order; a member
    changed outside the sweep, or with a damaged training state, carries a remark and a note."""
    planned = planned_configs(out)
    rows = []
    for entry in read_sweep(out)["members"]:
        name = entry["name"]
        run_dir = member_dir(out, name)
        redo = f"delete {run_dir} and run `vaelab sweep --out {out} --resume` to train it again as the grid says"
        status = member_status(run_dir)
        metrics: dict[str, Any] = {}
        seconds = math.nan
        remark = note = ""
        if status != "new":
            try:
                run = ckpt.load(run_dir)
            except ckpt.RunDirError as err:  # one damaged member is named; the table goes on
                rows.append(MemberRow(name, entry["values"], "damaged", {}, seconds, run_dir, "run unreadable",
                                      f"{name}: {err}; {redo}"))
                continue
            last = run.history.last
            seconds = last["seconds"] if last else math.nan
            if status == "done":
                metrics = run.metrics
            elif status == "diverged" and run.failure is not None:
                status = f"diverged at step {run.failure.get('step')} ({run.failure.get('term')})"
            _, problem = _state_problem(run_dir) if status in ("done", "damaged") else (None, None)
            changed = changed_settings(run.config, planned[name]) if name in planned else []
            if problem is not None:
                remark = "state.pt damaged"
                note = (f"{name}: {problem.split('; ')[0]}. The member finished training, so its model and metrics "
                        "stand; only training it further is lost" if status == "done" else
                        f"{name}: {problem.split('; ')[0]}; the member cannot be continued and was left as it was")
                note += f"; {redo}"
            elif changed:
                remark = f"changed: {', '.join(changed)}"
                note = (f"{name} was changed outside the sweep: {', '.join(changed)} (`vaelab train --resume` on the "
                        "member); its results are not comparable with the other members'. To undo it, " + redo)
        rows.append(MemberRow(name, entry["values"], status, metrics, seconds, run_dir, remark, note))
    return rows


def table_columns(rows: Sequence[MemberRow]) -> list[str]:
    """The columns of the metrics table: name, the swept settings' names, status, metrics, seconds."""
    axes = list(rows[0].values) if rows else []
    return ["name", *(a.split(".", 1)[1] for a in axes), "status", *METRIC_COLUMNS, "seconds"]


def table_values(row: MemberRow) -> list[Any]:
    return [row.name, *row.values.values(), row.shown_status, *(row.metrics.get(k) for k in METRIC_COLUMNS),
            row.seconds]


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
        if not is_sweep_dir(path):
            expanded.append(Path(path))
            continue
        names = [m["name"] for m in read_sweep(path)["members"]]
        missing = [name for name in names if not member_dir(path, name).is_dir()]
        if missing:  # said, not skipped in silence (audit CO14: "needs at least two run directories, got 1")
            warnings.warn(f"{path}: {len(missing)} of the sweep's {len(names)} members are not on disk "
                          f"({', '.join(missing)}; their folders under {RUNS_DIR}/ are gone), so only "
                          f"{len(names) - len(missing)} take part; `vaelab sweep --out {path} --resume` trains "
                          "them again", VaelabWarning, stacklevel=2)
        expanded.extend(member_dirs(path))
    return expanded
