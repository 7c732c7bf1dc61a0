"""Run directories: safetensors weights + JSON config + training state, written atomically.

A run directory holds everything needed to reload and explain a run::

    config.json        RunConfig (data / model / train / eval)
    model.safetensors  weights; header metadata records x_dim and cond_dim
    state.pt           optimizer, step, epoch, RNG state (tensors and numbers only)
    history.csv        one row per epoch
    metrics.json       written by evaluation
    condition.json     conditional runs only: the condition spec (label list / training range)
    failure.json       only when training stopped on a non-finite loss
    figures/           written by ``vaelab plot`` / the report (vaelab.plots)
    report.html        the run report, and reproduce.toml beside it when needed (vaelab.report)

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash mid-write never leaves a half-written file under the real name.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from vaelab.conditions import Condition
from vaelab.config import RunConfig
from vaelab.models import LatentModel, build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
CONDITION_FILE = "condition.json"
FIGURES_DIR = "figures"
REPORT_FILE = "report.html"
REPRODUCE_FILE = "reproduce.toml"
# Everything a run writes into its directory: what --overwrite clears, so nothing from the
# replaced run (a stale condition spec, old figures or report) survives beside the new one.
RUN_ARTIFACTS = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, HISTORY_FILE, METRICS_FILE, FAILURE_FILE, CONDITION_FILE,
                 FIGURES_DIR, REPORT_FILE, REPRODUCE_FILE)


class RunDirError(ValueError):
    """A folder that is not (or not yet) a vaelab run directory, or one that would be overwritten."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class History:
    """Per-epoch training record: a list of rows (dicts with the same keys), CSV on disk.

    ``lr`` is the learning rate of the epoch's last step, ``skipped`` the steps of the epoch
    that ``nonfinite = "skip"`` skipped, ``grad_norm`` the largest gradient norm of the epoch
    (over all parameters, before any clipping; NaN when a step had a non-finite gradient).
    """

    COLUMNS = ("epoch", "step", "loss", "recon", "kl", "diversity", "seconds", "lr", "skipped", "grad_norm")
    INT_COLUMNS = ("epoch", "step", "skipped")
    # Columns added after 0.1.0, and what a history.csv written before them reads as.
    LATER_COLUMNS = {"lr": math.nan, "skipped": 0, "grad_norm": math.nan}

    def __init__(self, rows: list[dict[str, float]] | None = None) -> None:
        self.rows: list[dict[str, float]] = list(rows or [])

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def column(self, name: str) -> list[float]:
        """All values of one column, in epoch order."""
        if name not in self.COLUMNS:
            raise KeyError(f"unknown history column {name!r}; columns are {', '.join(self.COLUMNS)}")
        return [float(r[name]) for r in self.rows]

    @property
    def last(self) -> dict[str, float] | None:
        return self.rows[-1] if self.rows else None

    def has_failure(self) -> bool:
        """True when some recorded loss is NaN or infinite."""
        return any(not math.isfinite(float(r["loss"])) for r in self.rows)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (int(row[k]) if k in self.INT_COLUMNS else repr(float(row[k])))
                             for k in self.COLUMNS})
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> History:
        rows = []
        for raw in csv.DictReader(io.StringIO(text)):
            for name, default in cls.LATER_COLUMNS.items():
                raw.setdefault(name, repr(default))
            rows.append({k: (int(raw[k]) if k in cls.INT_COLUMNS else float(raw[k])) for k in cls.COLUMNS})
        return cls(rows)


@dataclass
class TrainState:
    """Where training stops: enough, with the weights, to resume bit-exactly.

    At an epoch boundary ``epoch_rng`` is None. A checkpoint written mid-epoch (an
    interrupted run) also holds the generator state at the start of the unfinished epoch,
    from which the epoch's shuffle and binarization draw are regenerated, the batches of it
    already done, and the partial sums of its history row.
    """

    step: int = 0
    epoch: int = 0  # completed epochs
    optimizer: dict[str, Any] | None = None
    rng: torch.Tensor | None = None  # torch.Generator.get_state() of the training generator
    complete: bool = False
    skips: int = 0  # steps skipped by nonfinite = "skip" so far: the learning rate is scaled by 0.5**skips
    epoch_rng: torch.Tensor | None = None  # generator state at the start of the unfinished epoch
    batch: int = 0  # batches of the unfinished epoch already done
    epoch_sums: torch.Tensor | None = None  # (3,) float64: Σ loss, recon, kl weighted by batch size
    epoch_seen: int = 0  # points behind epoch_sums
    epoch_skipped: int = 0
    epoch_seconds: float = 0.0
    grad_norm_max: float = 0.0


@dataclass
class Run:
    """A loaded run directory: the model rebuilt from config + weights, and its records."""

    path: Path
    config: RunConfig
    model: LatentModel
    history: History = field(default_factory=History)
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] | None = None
    condition: Condition | None = None  # None for an unconditional model


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def save_weights(run_dir: Path, model: LatentModel) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "vaelab-1", "kind": model.config.kind, "x_dim": str(model.x_dim), "cond_dim": str(model.cond_dim),
            "cond_embed": ",".join(str(w) for w in getattr(model, "cond_embed", ()))}
    atomic_write_bytes(run_dir / WEIGHTS_FILE, save_safetensors(tensors, metadata=meta))


def save_state(run_dir: Path, state: TrainState) -> None:
    buf = io.BytesIO()
    torch.save({f.name: getattr(state, f.name) for f in fields(TrainState)}, buf)
    atomic_write_bytes(run_dir / STATE_FILE, buf.getvalue())


def save(
    run_dir: str | Path, model: LatentModel, config: RunConfig, *, history: History | None = None,
    state: TrainState | None = None, condition: Condition | None = None,
) -> Path:
    """Write config, weights, and (when given) history, training state and the condition
    spec of a conditional model to ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, config.to_json() + "\n")
    if condition is not None:
        write_json(run_dir / CONDITION_FILE, condition.to_dict())
    elif model.cond_dim == 0:
        (run_dir / CONDITION_FILE).unlink(missing_ok=True)  # an unconditional model has no spec
    save_weights(run_dir, model)
    if history is not None:
        atomic_write_text(run_dir / HISTORY_FILE, history.to_csv())
    if state is not None:
        save_state(run_dir, state)
    return run_dir


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def _require_run(run_dir: Path) -> None:
    if not run_dir.exists():
        raise RunDirError(f"{run_dir}: no such folder; pass the run directory that `vaelab train` wrote")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: is a file, not a run directory")
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (run_dir / f).is_file()]
    if missing:
        raise RunDirError(
            f"{run_dir}: not a vaelab run directory (missing {', '.join(missing)}); "
            "pass a folder written by `vaelab train`"
        )


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[LatentModel, RunConfig]:
    """Rebuild the model from ``config.json`` + ``model.safetensors`` alone."""
    run_dir = Path(run_dir)
    _require_run(run_dir)
    config = RunConfig.from_json_file(run_dir / CONFIG_FILE)
    try:
        with safe_open(str(run_dir / WEIGHTS_FILE), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise RunDirError(f"{run_dir / WEIGHTS_FILE}: cannot read the weights ({err})") from None
    if meta.get("format") != "vaelab-1":
        raise RunDirError(f"{run_dir / WEIGHTS_FILE}: not written by vaelab (no vaelab metadata in the header)")
    embed = [int(w) for w in meta.get("cond_embed", "").split(",") if w]
    model = build_model(config.model, int(meta["x_dim"]), int(meta.get("cond_dim", "0")), cond_embed=embed)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise RunDirError(f"{run_dir}: weights do not match config.json ({err})") from None
    return model.to(device), config


def load_state(run_dir: str | Path) -> TrainState:
    """The training state saved beside the weights (weights_only: no pickled code)."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise RunDirError(f"{path}: no training state; this run cannot be resumed")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    # Fields missing from an older state.pt keep their defaults (an epoch-boundary state).
    return TrainState(**{f.name: raw[f.name] for f in fields(TrainState) if f.name in raw})


def load_history(run_dir: str | Path) -> History:
    path = Path(run_dir) / HISTORY_FILE
    return History.from_csv(path.read_text()) if path.is_file() else History()


def load_condition(run_dir: str | Path, model: LatentModel | None = None) -> Condition | None:
    """The condition spec of a conditional run (None when unconditional), checked against
    the model's condition width when ``model`` is given."""
    path = Path(run_dir) / CONDITION_FILE
    if not path.is_file():
        if model is not None and model.cond_dim:
            raise RunDirError(f"{path}: missing; the model is conditional (c of width {model.cond_dim}) "
                              "but the run does not say what its condition means")
        return None
    try:
        condition = Condition.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as err:
        raise RunDirError(f"{path}: cannot read the condition spec ({err})") from None
    if model is not None and condition.width != model.cond_dim:
        raise RunDirError(f"{path}: describes a condition of width {condition.width}, "
                          f"the weights expect {model.cond_dim}")
    return condition


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load a run directory: model (eval mode), config, history, metrics, any failure record
    and, for a conditional model, its condition spec."""
    run_dir = Path(run_dir)
    model, config = load_model(run_dir, device)
    model.eval()
    metrics_path, failure_path = run_dir / METRICS_FILE, run_dir / FAILURE_FILE
    return Run(
        path=run_dir, config=config, model=model, history=load_history(run_dir),
        metrics=json.loads(metrics_path.read_text()) if metrics_path.is_file() else {},
        failure=json.loads(failure_path.read_text()) if failure_path.is_file() else None,
        condition=load_condition(run_dir, model),
    )
