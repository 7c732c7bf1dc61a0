"""The checkpoint journal: the checkpoint files (layout.CHECKPOINT_FILES) change together or not at all (see the
package docstring), and ``recover`` finishes a commit a crash interrupted."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from vaelab.checkpoint.atomic import _TMP_SUFFIX, WriteError, _fsync_dir, _sha256, _why, _write_new, file_kind
from vaelab.checkpoint.layout import (
    COMMITTED_DIR,
    CONDITION_FILE,
    CONFIG_FILE,
    DATA_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MARKER_FILE,
    STAGING_DIR,
    STATE_FILE,
    WEIGHTS_FILE,
    IntegrityError,
    RunDirError,
)
from vaelab.conditions.spec import Condition
from vaelab.config import RunConfig
from vaelab.history import History
from vaelab.models import LatentModel, family_source


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
    epoch_sums: torch.Tensor | None = None  # (1 + terms,) float64: Σ loss and each term, weighted by batch size
    epoch_seen: int = 0  # points behind epoch_sums
    epoch_skipped: int = 0
    epoch_seconds: float = 0.0
    grad_norm_max: float = 0.0
    # Under torchrun: every rank's noise generator state, in rank order (``rng`` is then the
    # data generator all ranks share); None for a run trained by one process.
    noise_rngs: list[torch.Tensor] | None = None


def _canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header keys sorted.

    safetensors writes the metadata map in hash order, which differs between processes, so two
    bit-identical models gave different files. Sorting the header makes the bytes a function of
    the tensors and metadata alone. The data offsets are relative to the end of the header, so
    only the header changes; it is padded with spaces to keep the data 8-byte aligned.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def weights_bytes(model: LatentModel) -> bytes:
    """The model's weights as a canonical safetensors file (bit-identical weights -> identical bytes)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "vaelab-1", "kind": model.config.kind, "x_dim": str(model.x_dim), "cond_dim": str(model.cond_dim),
            "cond_embed": ",".join(str(w) for w in getattr(model, "cond_embed", ()))}
    # A family from outside vaelab records where it comes from (module:Class), so loading the
    # run imports that module (models.family_of_run); built-in families record nothing.
    source = family_source(model.config.kind)
    if source is not None:
        meta["family"] = source
    return _canonical_safetensors(save_safetensors(tensors, metadata=meta))


def _state_bytes(state: TrainState) -> bytes:
    buf = io.BytesIO()
    torch.save({f.name: getattr(state, f.name) for f in fields(TrainState)}, buf)
    return buf.getvalue()


@dataclass
class _Snapshot:
    """Files of one checkpoint, read consistently (see the module docstring)."""

    manifest: dict[str, Any] | None
    files: dict[str, bytes]
    changed: list[str]  # files whose bytes differ from the manifest's checksum
    missing: list[str]  # files the manifest lists that are not there


def _read_opt(path: Path) -> bytes | None:
    """A run file's bytes (None when absent). Only a regular file is read: a named pipe would
    block forever and a device never end (audit RD21: eval hung on a FIFO history.csv)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise RunDirError(f"{path}: is {file_kind(st.st_mode)}, not a regular file; a run's files are regular "
                              "files written by vaelab: restore it from a copy of the run, or train the run again")
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RunDirError(f"{path}: cannot read ({_why(err)})") from None


def _read_current(run_dir: Path, name: str) -> bytes | None:
    """A checkpoint file as a reader must see it: a committed new version first."""
    data = _read_opt(run_dir / COMMITTED_DIR / name)
    return data if data is not None else _read_opt(run_dir / name)


def _parse_manifest(run_dir: Path, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        int(manifest["step"])
        ok = manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise IntegrityError(f"{run_dir / MANIFEST_FILE}: damaged (not a vaelab checkpoint manifest), so the run's "
                             "files cannot be checked; restore it from a copy of the run, or train the run again "
                             "(deleting it does not help: a run vaelab made is never loaded unchecked)")
    return manifest


def _no_manifest(run_dir: Path) -> None:
    """A run without a manifest: one from vaelab 0.1.0 (no ownership marker, no data fingerprint)
    loads as it is; one that vaelab made since (it holds the marker, or data.json, which 0.1.0
    never wrote: deleting the marker too is no way around the check) lost its checksums, and
    loading it unchecked would let damaged weights evaluate silently, so it is refused."""
    if (run_dir / MARKER_FILE).is_file() or (run_dir / DATA_FILE).is_file():
        raise IntegrityError(
            f"{run_dir / MANIFEST_FILE}: missing. This run was written by a vaelab that records the sha256 of "
            "every file in it, so without it damaged or edited files would go unnoticed; restore checkpoint.json "
            "from a copy of the run, or train the run again")


def _snapshot(run_dir: Path, names: Iterable[str], attempts: int = 500) -> _Snapshot:
    """Read ``names`` of the current checkpoint so that all come from one commit.

    The manifest is read before and after the files; if a writer committed in between it
    differs and the read is repeated (a commit takes milliseconds).
    """
    names = tuple(names)
    for _ in range(attempts):
        before = _read_current(run_dir, MANIFEST_FILE)
        if before is None:  # a run from before manifests: the files as they are
            _no_manifest(run_dir)
            files = {n: d for n in names if (d := _read_opt(run_dir / n)) is not None}
            return _Snapshot(None, files, [], [])
        manifest = _parse_manifest(run_dir, before)
        files, missing = {}, []
        for name in names:
            if name not in manifest["files"]:
                continue
            data = _read_current(run_dir, name)
            if data is None:
                missing.append(name)
            else:
                files[name] = data
        if _read_current(run_dir, MANIFEST_FILE) == before:
            changed = [n for n, d in files.items() if _sha256(d) != manifest["files"][n]]
            return _Snapshot(manifest, files, changed, missing)
        time.sleep(0.01)
    raise RunDirError(f"{run_dir}: the checkpoint kept changing while it was read; try again")


def _roll_forward(run_dir: Path) -> None:
    """Finish moving a committed checkpoint into place (idempotent; the caller holds the lock)."""
    committed = run_dir / COMMITTED_DIR
    if not committed.is_dir():
        return
    for path in sorted(committed.iterdir()):
        if path.name != MANIFEST_FILE:
            os.replace(path, run_dir / path.name)
    if (committed / MANIFEST_FILE).exists():
        os.replace(committed / MANIFEST_FILE, run_dir / MANIFEST_FILE)  # the manifest last
    _fsync_dir(run_dir)
    os.rmdir(committed)


def recover(run_dir: str | Path) -> None:
    """Bring a run a crash interrupted mid-checkpoint to one whole checkpoint (caller holds the lock):
    roll a committed checkpoint forward, drop an uncommitted one and stray temporary files."""
    run_dir = Path(run_dir)
    try:
        _roll_forward(run_dir)
        if (run_dir / STAGING_DIR).exists():
            shutil.rmtree(run_dir / STAGING_DIR)
        for tmp in run_dir.glob(f".*{_TMP_SUFFIX}"):
            tmp.unlink()
    except OSError as err:
        raise WriteError(f"{run_dir}: cannot repair the interrupted checkpoint ({_why(err)}); "
                         "check that the folder is writable") from None


def _commit(run_dir: Path, files: Mapping[str, bytes], step: int) -> dict[str, Any]:
    """Make ``files`` (name -> bytes) part of a new checkpoint at ``step``, as one unit.

    Files of the current checkpoint not in ``files`` are kept with their recorded checksums.
    """
    try:
        recover(run_dir)
        current = _read_opt(run_dir / MANIFEST_FILE)
        entries = dict(_parse_manifest(run_dir, current)["files"]) if current is not None else {}
        staging = run_dir / STAGING_DIR
        staging.mkdir()
        try:
            for name, data in files.items():
                _write_new(staging / name, data)
                entries[name] = _sha256(data)
            manifest = {"format": MANIFEST_FORMAT, "step": int(step), "files": dict(sorted(entries.items()))}
            _write_new(staging / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
            _fsync_dir(staging)
        except BaseException:
            # Interrupted before the commit (an error, a second Ctrl-C): the previous checkpoint
            # stands, and the half-written one is dropped rather than left for recover().
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.rename(staging, run_dir / COMMITTED_DIR)  # the commit: one atomic rename
        _fsync_dir(run_dir)
        _roll_forward(run_dir)
    except OSError as err:
        raise WriteError(f"{run_dir}: cannot write the checkpoint ({_why(err)}); check that the folder "
                         "is writable and the disk is not full") from None
    return manifest


def write_checkpoint(
    run_dir: str | Path, model: LatentModel, config: RunConfig, *, history: History | None = None,
    state: TrainState | None = None, condition: Condition | None = None, data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Commit config, weights and (when given) history, training state, condition spec and the
    fingerprint of the training data (``data``, see vaelab.train.run.data_fingerprint) as one
    checkpoint; returns its manifest. Files not given keep their recorded versions (the data
    fingerprint is written with the first checkpoint and stays). The caller holds the run's lock."""
    run_dir = Path(run_dir)
    files = {CONFIG_FILE: (config.to_json() + "\n").encode("utf-8"), WEIGHTS_FILE: weights_bytes(model)}
    if condition is not None:
        files[CONDITION_FILE] = (json.dumps(condition.to_dict(), indent=2) + "\n").encode("utf-8")
    if history is not None:
        files[HISTORY_FILE] = history.to_csv().encode("utf-8")
    if state is not None:
        files[STATE_FILE] = _state_bytes(state)
    if data is not None:
        files[DATA_FILE] = (json.dumps(dict(data), indent=2, sort_keys=True) + "\n").encode("utf-8")
    return _commit(run_dir, files, step=0 if state is None else state.step)


def write_data_fingerprint(run_dir: str | Path, data: Mapping[str, Any]) -> None:
    """Add the training data's fingerprint to the current checkpoint (a run that began before
    vaelab recorded one, resumed now). A run without a manifest is left as it is."""
    run_dir = Path(run_dir)
    current = _snapshot(run_dir, ()).manifest
    if current is not None:
        _commit(run_dir, {DATA_FILE: (json.dumps(dict(data), indent=2, sort_keys=True) + "\n").encode("utf-8")},
                step=current["step"])


def write_history(run_dir: str | Path, history: History) -> None:
    """Replace the history of the current checkpoint (e.g. to record the epoch that diverged)."""
    run_dir = Path(run_dir)
    current = _snapshot(run_dir, ()).manifest
    _commit(run_dir, {HISTORY_FILE: history.to_csv().encode("utf-8")}, step=0 if current is None else current["step"])
