"""Reading a run back: the model from its config and weights (checked against the manifest),
its training state, history, condition, metrics and failure record."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from vaelab.checkpoint.atomic import file_kind, write_json
from vaelab.checkpoint.folder import claim
from vaelab.checkpoint.journal import TrainState, _snapshot, write_checkpoint
from vaelab.checkpoint.layout import (
    COMMITTED_DIR,
    CONDITION_FILE,
    CONFIG_FILE,
    DATA_FILE,
    FAILURE_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    IntegrityError,
    RunDirError,
)
from vaelab.conditions.spec import Condition
from vaelab.config import RunConfig
from vaelab.errors import InputError
from vaelab.history import History
from vaelab.models import LatentModel, build_model, family_of_run


def _parse_history(path: Path, data: bytes) -> History:
    try:
        return History.from_csv(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise RunDirError(f"{path}: cannot read the training history ({err}); the model still loads, but "
                          "this needs the history: restore the file, or delete it to go on without one") from None


def _history_changed(run_dir: Path) -> IntegrityError:
    return IntegrityError(
        f"{run_dir / HISTORY_FILE}: does not match the sha256 recorded in {MANIFEST_FILE}; the training history was "
        "edited or damaged after training, so its curves and final loss are not the run's. The model still loads "
        "(vaelab eval works); restore the file from a copy of the run, or train the run again")


@dataclass(eq=False)
class Run:
    """A loaded run directory: the model rebuilt from config + weights, and its records.

    ``history``, ``metrics`` and ``failure`` are read when first used, so a damaged auxiliary
    file blocks only what needs it (with an error naming the file), never the model.
    ``manifest`` is the checkpoint.json of the checkpoint loaded (None for a run written
    before checkpoints had manifests).
    """

    path: Path
    config: RunConfig
    model: LatentModel
    condition: Condition | None = None  # None for an unconditional model
    manifest: dict[str, Any] | None = None
    history_bytes: bytes | None = field(default=None, repr=False)
    history_changed: bool = field(default=False, repr=False)  # its sha256 differs from the manifest's

    @property
    def step(self) -> int | None:
        """The optimizer step of the loaded checkpoint (None when the run does not record it)."""
        return None if self.manifest is None else int(self.manifest["step"])

    @cached_property
    def history(self) -> History:
        if self.history_changed:
            raise _history_changed(self.path)
        if self.history_bytes is None:
            return History()
        return _parse_history(self.path / HISTORY_FILE, self.history_bytes)

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """The held-out metrics of *this* checkpoint ({} when none were computed for it)."""
        raw = _read_json_record(self.path / METRICS_FILE, "held-out metrics",
                                "run `vaelab eval RUN` to compute them again")
        if raw is None:
            return {}
        tag = raw.pop("checkpoint", None)
        if self.manifest is not None and tag is not None and tag != _metrics_tag(self.manifest):
            # Computed for another checkpoint (an eval while the run was training, or before a
            # resume): they do not describe this model, so they are not shown as its result.
            return {}
        return raw

    @cached_property
    def failure(self) -> dict[str, Any] | None:
        return _read_json_record(self.path / FAILURE_FILE, "failure record",
                                 "delete it if the run has since been resumed successfully")


def _read_json_record(path: Path, what: str, fix: str) -> dict[str, Any] | None:
    """An auxiliary JSON object (None when the file is absent); errors name the file and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: cannot read the {what} ({err}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON, so the {what} cannot be read ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: the {what} should be a JSON object, found {type(data).__name__}; {fix}")
    return data


def _metrics_tag(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": int(manifest["step"]), "model_sha256": manifest["files"].get(WEIGHTS_FILE)}


def write_metrics(run: Run, metrics: Mapping[str, Any]) -> Path:
    """Write ``RUN/metrics.json`` tagged with the checkpoint the metrics were computed on.

    Metrics of another checkpoint (say, an eval while the run was still training) are then
    recognised and ignored by :attr:`Run.metrics` instead of passing for the final result.
    """
    path = run.path / METRICS_FILE
    tagged = dict(metrics)
    if run.manifest is not None:
        tagged["checkpoint"] = _metrics_tag(run.manifest)
    write_json(path, tagged)
    run.__dict__["metrics"] = dict(metrics)  # refresh the cached value
    return path


def discard_stale_metrics(run: Run) -> None:
    """Remove ``metrics.json`` unless it is tagged with ``run``'s checkpoint.

    Training calls it when it ends: metrics written meanwhile (an eval while it trained, or
    untagged ones whose checkpoint cannot be told) describe an earlier model, and must not
    stay in the finished run as its result. A damaged file is left for :attr:`Run.metrics`
    to report.
    """
    path = run.path / METRICS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if run.manifest is not None and (not isinstance(raw, dict) or raw.get("checkpoint") != _metrics_tag(run.manifest)):
        path.unlink(missing_ok=True)
        run.__dict__.pop("metrics", None)


def _read_weights(path: Path, data: bytes) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file held in memory; errors name ``path``."""
    from safetensors.torch import load as load_safetensors

    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
        tensors = load_safetensors(data)
    except Exception as err:  # noqa: BLE001 (safetensors and json raise several types for a damaged file)
        raise RunDirError(f"{path}: cannot read the weights ({err}); the file is damaged: restore it "
                          "or train the run again") from None
    if not isinstance(meta, dict) or meta.get("format") != "vaelab-1":
        raise RunDirError(f"{path}: not written by vaelab (no vaelab metadata in the header)")
    return meta, tensors


def _meta_int(path: Path, meta: Mapping[str, str], key: str, default: str | None = None) -> int:
    value = meta.get(key, default)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RunDirError(f"{path}: the header records {key}={value!r}, not a whole number; the file was "
                          "edited or damaged: restore it or train the run again") from None


def _weights_mismatch(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> str:
    """How saved weights differ from the tensors ``model`` holds, in words ("" when they fit):
    tensors of other shapes, missing and extra ones, each counted with the first named (audit
    RD02: torch's load_state_dict error listed torch.Size objects and called the file a "checkpoint")."""
    def dims(shape: Any) -> str:
        return " x ".join(map(str, shape)) or "a scalar"

    expected = model.state_dict()
    parts = []
    shaped = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if shaped:
        k = shaped[0]
        parts.append(f"{len(shaped)} of its {len(tensors)} tensors have other shapes (first: {k} is "
                     f"{dims(tensors[k].shape)} in the file, {dims(expected[k].shape)} for {CONFIG_FILE})")
    missing = [k for k in expected if k not in tensors]
    if missing:
        parts.append(f"{len(missing)} tensors the model needs are missing (first: {missing[0]})")
    extra = [k for k in tensors if k not in expected]
    if extra:
        parts.append(f"{len(extra)} tensors belong to no part of the model (first: {extra[0]})")
    return "; ".join(parts)


def _check_finite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise IntegrityError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                             "the weights are damaged: restore the file or train the run again")


def save(
    run_dir: str | Path, model: LatentModel, config: RunConfig, *, history: History | None = None,
    state: TrainState | None = None, condition: Condition | None = None, overwrite: bool = False,
) -> Path:
    """Write a new run directory: config, weights, and (when given) history, training state and
    the condition spec of a conditional model, as one checkpoint.

    A folder that already holds files is refused unless ``overwrite``; then it must be a vaelab
    run, and every file of the replaced run is removed first (nothing of it is left beside the
    new weights).
    """
    run_dir = Path(run_dir)
    with claim(run_dir, overwrite=overwrite):
        write_checkpoint(run_dir, model, config, history=history, state=state, condition=condition)
    return run_dir


def _require_run(run_dir: Path) -> None:
    if not run_dir.exists():
        raise RunDirError(f"{run_dir}: no such folder; pass the run directory that `vaelab train` wrote")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: is a file, not a run directory")
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE)
               if not (run_dir / f).is_file() and not (run_dir / COMMITTED_DIR / f).is_file()]
    for name in missing:
        path = run_dir / name
        if os.path.lexists(path):  # there, but not a file (audit RD18, RD20: reported as "missing")
            try:
                kind = file_kind(os.stat(path).st_mode)
            except OSError as err:
                kind = f"unreadable ({err.strerror or err})"
            link = f" ({path} -> {os.path.realpath(path)})" if path.is_symlink() else ""
            raise RunDirError(f"{path}: is {kind}{link}, not the run's {name} file; restore the file from a copy "
                              "of the run, or train the run again")
    if missing:
        raise RunDirError(
            f"{run_dir}: not a vaelab run directory (missing {', '.join(missing)}); "
            "pass a folder written by `vaelab train`"
        )


def _load_run(run_dir: Path, device: str | torch.device) -> Run:
    _require_run(run_dir)
    snap = _snapshot(run_dir, (CONFIG_FILE, WEIGHTS_FILE, CONDITION_FILE, HISTORY_FILE))
    for name in snap.missing:
        if name not in (HISTORY_FILE, CONDITION_FILE):  # a missing condition spec is explained below
            raise IntegrityError(f"{run_dir / name}: missing, but {MANIFEST_FILE} lists it as part of the "
                                 "checkpoint; restore it or train the run again")
    for name in snap.changed:
        if name == CONFIG_FILE:
            raise IntegrityError(
                f"{run_dir / CONFIG_FILE}: changed since the weights were saved (its sha256 differs from the one "
                f"in {MANIFEST_FILE}); the weights were trained with the recorded settings and would silently "
                "become a different model. Undo the edit, or train a new run with the new settings")
        if name in (WEIGHTS_FILE, CONDITION_FILE):
            raise IntegrityError(
                f"{run_dir / name}: does not match the sha256 recorded in {MANIFEST_FILE}; the file was modified "
                "or damaged after training: restore it or train the run again")
    config_path, weights_path = run_dir / CONFIG_FILE, run_dir / WEIGHTS_FILE
    try:
        raw_config = json.loads(snap.files[CONFIG_FILE])
    except (KeyError, ValueError) as err:
        raise RunDirError(f"{config_path}: cannot read the run configuration ({err})") from None
    config = RunConfig.from_dict(raw_config, str(config_path))
    if WEIGHTS_FILE not in snap.files:
        raise RunDirError(f"{weights_path}: missing; pass a folder written by `vaelab train`")
    meta, tensors = _read_weights(weights_path, snap.files[WEIGHTS_FILE])
    _check_finite(weights_path, tensors)
    x_dim, cond_dim = _meta_int(weights_path, meta, "x_dim"), _meta_int(weights_path, meta, "cond_dim", "0")
    embed = [_meta_int(weights_path, {"cond_embed": w}, "cond_embed") for w in meta.get("cond_embed", "").split(",")
             if w]
    try:  # a family from outside vaelab: its recorded module is imported when not registered yet
        family_of_run(config.model.kind, meta.get("family"))
    except InputError as err:
        raise RunDirError(f"{run_dir}: {err}") from err
    # A fixed seed builds the placeholder weights inside a fork of the RNG, so loading a run
    # never draws from (advances) the caller's global torch RNG; they are all overwritten below.
    model = build_model(config.model, x_dim, cond_dim, seed=0, cond_embed=embed)
    mismatch = _weights_mismatch(model, tensors)
    if mismatch:
        raise RunDirError(
            f"{run_dir}: {WEIGHTS_FILE} does not fit the model {CONFIG_FILE} describes ({config.model.kind}, "
            f"latent_dim {config.model.latent_dim}, hidden {','.join(map(str, config.model.hidden))}): {mismatch}; "
            f"{CONFIG_FILE} was changed after training or comes from another run: restore the run's own "
            f"{CONFIG_FILE}, or train the run again")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:  # a family's own loading rules (the shapes and names fit)
        raise RunDirError(f"{run_dir}: weights do not match config.json ({' '.join(str(err).split())})") from None
    model = model.to(device)
    condition = _parse_condition(run_dir, snap.files.get(CONDITION_FILE), model)
    return Run(path=run_dir, config=config, model=model, condition=condition, manifest=snap.manifest,
               history_bytes=snap.files.get(HISTORY_FILE), history_changed=HISTORY_FILE in snap.changed)


def _parse_condition(run_dir: Path, data: bytes | None, model: LatentModel) -> Condition | None:
    path = run_dir / CONDITION_FILE
    if data is None:
        if model.cond_dim:
            raise RunDirError(f"{path}: missing; the model is conditional (c of width {model.cond_dim}) "
                              "but the run does not say what its condition means")
        return None
    try:
        condition = Condition.from_dict(json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise RunDirError(f"{path}: cannot read the condition spec ({err})") from None
    if condition.width != model.cond_dim:
        raise RunDirError(f"{path}: describes a condition of width {condition.width}, "
                          f"the weights expect {model.cond_dim}")
    return condition


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[LatentModel, RunConfig]:
    """Rebuild the model from ``config.json`` + ``model.safetensors``, checked against the checkpoint."""
    run = _load_run(Path(run_dir), device)
    return run.model, run.config


def load_state(run_dir: str | Path) -> TrainState:
    """The training state saved beside the weights (weights_only: no pickled code is ever run)."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    snap = _snapshot(run_dir, (STATE_FILE,))
    if STATE_FILE not in snap.files:
        raise RunDirError(f"{path}: no training state; this run cannot be resumed")
    if STATE_FILE in snap.changed:
        raise IntegrityError(f"{path}: does not match the sha256 recorded in {MANIFEST_FILE}; the file was modified "
                             f"or damaged, so the run cannot be resumed exactly. The model still loads; {_REDO}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error below says it all
            warnings.simplefilter("ignore")
            raw = torch.load(io.BytesIO(snap.files[STATE_FILE]), map_location="cpu", weights_only=True)
        # Fields missing from an older state.pt keep their defaults (an epoch-boundary state).
        state = TrainState(**{f.name: raw[f.name] for f in fields(TrainState) if f.name in raw})
        state.step, state.epoch, state.complete = int(raw["step"]), int(raw["epoch"]), bool(state.complete)
    except Exception as err:  # noqa: BLE001 (torch.load raises many types for a damaged or foreign file)
        reason = _state_error_reason(err)
        raise RunDirError(f"{path}: cannot read the training state ({reason}); the file is damaged or was not "
                          f"written by vaelab (nothing in it was run). The model still loads; {_REDO}") from None
    return state


# How to redo a run whose training state is lost: a run of its own, or a member of a sweep
# (which has no --overwrite: audit SW30).
_REDO = ("to redo the run, train it again with `vaelab train --out RUN --overwrite` (a sweep member: delete its "
         "folder and `vaelab sweep --out SWEEP --resume` trains it again)")


def _state_error_reason(err: Exception) -> str:
    """A short reason why state.pt could not be read. torch's own message for a refused pickle
    suggests loading it with ``weights_only=False``, which would run the file's code: that
    advice is never passed on; only the line naming what was refused is."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported" in line or "GLOBAL" in line]
    if named:
        return named[0][:200]
    if lines and "weights_only" not in lines[0]:
        return lines[0][:200]
    return f"{type(err).__name__}: not a state file vaelab can read without running code"


def load_history(run_dir: str | Path) -> History:
    """The history of the current checkpoint (empty when the run has none)."""
    run_dir = Path(run_dir)
    snap = _snapshot(run_dir, (HISTORY_FILE,))
    if HISTORY_FILE in snap.changed:
        raise _history_changed(run_dir)
    data = snap.files.get(HISTORY_FILE)
    return History() if data is None else _parse_history(run_dir / HISTORY_FILE, data)


def load_data_fingerprint(run_dir: str | Path) -> dict[str, Any] | None:
    """The fingerprint of the training data the run began on (``data.json``, checked against the
    manifest); None for a run written before vaelab recorded one."""
    run_dir = Path(run_dir)
    path = run_dir / DATA_FILE
    snap = _snapshot(run_dir, (DATA_FILE,))
    if DATA_FILE in snap.missing:
        raise IntegrityError(f"{path}: missing, but {MANIFEST_FILE} lists it as part of the checkpoint; restore it "
                             "or train the run again")
    if DATA_FILE in snap.changed:
        raise IntegrityError(f"{path}: does not match the sha256 recorded in {MANIFEST_FILE}; the record of the "
                             "training data was edited or damaged: restore it or train the run again")
    data = snap.files.get(DATA_FILE)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError as err:
        raise RunDirError(f"{path}: cannot read the data fingerprint ({err})") from None
    if not isinstance(record, dict):
        raise RunDirError(f"{path}: the data fingerprint should be a JSON object")
    return record


def load_condition(run_dir: str | Path, model: LatentModel | None = None) -> Condition | None:
    """The condition spec of a conditional run (None when unconditional), checked against
    the model's condition width when ``model`` is given."""
    run_dir = Path(run_dir)
    data = _snapshot(run_dir, (CONDITION_FILE,)).files.get(CONDITION_FILE)
    if model is None:
        if data is None:
            return None
        try:
            return Condition.from_dict(json.loads(data))
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
            raise RunDirError(f"{run_dir / CONDITION_FILE}: cannot read the condition spec ({err})") from None
    return _parse_condition(run_dir, data, model)


def load(run_dir: str | bytes | Path, device: str | torch.device = "cpu") -> Run:
    """Load a run directory: the model (eval mode) and config of its current checkpoint,
    verified against the checksums the checkpoint recorded, and, for a conditional model,
    its condition spec. History, metrics and any failure record are read when first used.
    ``run_dir`` is a path: str, bytes (as os.listdir(b".") gives) or os.PathLike.

    Never draws from the global torch RNG and never writes: a read-only run loads.
    """
    if isinstance(run_dir, bytes):  # (audit AP50: pathlib's "argument should be a str object ...")
        run_dir = os.fsdecode(run_dir)
    if not isinstance(run_dir, str | os.PathLike):
        raise RunDirError(f"run_dir must be a path (str or pathlib.Path), got {type(run_dir).__name__}")
    run = _load_run(Path(run_dir), device)
    run.model.eval()
    return run
