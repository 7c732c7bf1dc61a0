"""Run directories: safetensors weights + JSON config + training state, one checkpoint at a time.

A run directory holds everything needed to reload and explain a run::

    config.json        RunConfig (data / model / train / eval)
    model.safetensors  weights; header metadata records x_dim and cond_dim
    state.pt           optimizer, step, epoch, RNG state (tensors and numbers only)
    history.csv        one row per epoch
    condition.json     conditional runs only: the condition spec (label list / training range)
    checkpoint.json    the manifest of the current checkpoint: its step and the sha256 of each
                       file above (written last: it is what makes a checkpoint count)
    metrics.json       written by evaluation, tagged with the checkpoint it evaluated
    failure.json       only when training stopped on a non-finite loss
    figures/           written by ``vaelab plot`` / the report (vaelab.plots)
    report.html        the run report, and reproduce.toml beside it when needed (vaelab.report)
    .vaelab-run        ownership marker: this folder was made by vaelab (--overwrite needs it)
    .vaelab-lock       the lock a training holds on the folder (flock; freed when it exits)

**One checkpoint is one unit.** The five checkpoint files (config, weights, state, history,
condition) change together or not at all, by a journal:

1. every new file and then the new manifest are written and fsynced into ``.checkpoint.tmp/``;
2. that folder is renamed to ``.checkpoint.new/``: this one atomic rename is the commit;
3. each file is moved from ``.checkpoint.new/`` over its real name (``os.replace``), the
   manifest last, and the empty folder is removed ("roll forward").

A crash before step 2 leaves the old checkpoint untouched (``.checkpoint.tmp/`` is ignored and
removed by the next writer); a crash during step 3 leaves a committed checkpoint split between
``.checkpoint.new/`` and the run folder. Readers therefore look up each file first in
``.checkpoint.new/`` and then in the run folder: at every instant that gives all files of step
N or all of step N-1, never a mix. The next writer (a resumed training) finishes the roll
forward under the lock. Readers never write, so a read-only run still loads; a reader that
overlaps a commit sees the manifest change under it and reads again.

The manifest's checksums also make the folder tamper-evident: a weights file or config.json
changed after training is named on load instead of silently giving a different model.
Other files (metrics, failure record, figures) are auxiliary: a broken one never blocks
loading the model, and only what needs it reports the broken file.

Every file is created with mode 0666 minus the user's umask (like any other program's output)
and errors name the file the user asked for, never a temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from vaelab.conditions import Condition
from vaelab.config import RunConfig
from vaelab.errors import InputError
from vaelab.history import History
from vaelab.models import LatentModel, build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
CONDITION_FILE = "condition.json"
MANIFEST_FILE = "checkpoint.json"
FIGURES_DIR = "figures"
REPORT_FILE = "report.html"
REPRODUCE_FILE = "reproduce.toml"
MARKER_FILE = ".vaelab-run"
LOCK_FILE = ".vaelab-lock"
STAGING_DIR = ".checkpoint.tmp"
COMMITTED_DIR = ".checkpoint.new"
MANIFEST_FORMAT = "vaelab-checkpoint-1"
MARKER_FORMAT = "vaelab-run-1"
# The files that make up one checkpoint (one unit, see the module docstring).
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, HISTORY_FILE, CONDITION_FILE)
# Everything a run writes into its directory: what --overwrite clears, so nothing from the
# replaced run (a stale condition spec, old figures or report) survives beside the new one.
RUN_ARTIFACTS = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, HISTORY_FILE, METRICS_FILE, FAILURE_FILE, CONDITION_FILE,
                 MANIFEST_FILE, FIGURES_DIR, REPORT_FILE, REPRODUCE_FILE, STAGING_DIR, COMMITTED_DIR)
# No command may write over these unless writing them is its job (check_output_path).
OWNED_NAMES = (*RUN_ARTIFACTS, MARKER_FILE, LOCK_FILE)
_TMP_SUFFIX = ".vaelab-tmp"


class RunDirError(InputError):
    """A folder that is not (or not yet) a vaelab run directory, or one that would be overwritten."""


class IntegrityError(RunDirError):
    """A run file that does not match the checksum its checkpoint recorded, or holds non-finite weights."""


class RunLockedError(RunDirError):
    """Another process is writing the run directory (it holds the run's lock)."""


class WriteError(InputError):
    """A file could not be written; the message names the file the caller asked for."""


# --------------------------------------------------------------------------- file primitives


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist) with ``data``, fsynced.

    ``os.open(..., 0o666)`` lets the kernel apply the user's umask, as for any other file the
    user creates (``tempfile.mkstemp`` would force 0600 and hide a shared run from colleagues).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder + ``os.replace``.

    A crash never leaves a half-written file under the real name. Errors name ``path``
    (never the temporary file) and say what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: is a folder; give the name of a file to write")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_new(tmp, data)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(f"{path}: cannot write ({_why(err)}); check that the folder exists and is writable, "
                         "or choose another path") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


# --------------------------------------------------------------------------- records


def _parse_history(path: Path, data: bytes) -> History:
    try:
        return History.from_csv(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise RunDirError(f"{path}: cannot read the training history ({err}); the model still loads, but "
                          "this needs the history: restore the file, or delete it to go on without one") from None


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

    @property
    def step(self) -> int | None:
        """The optimizer step of the loaded checkpoint (None when the run does not record it)."""
        return None if self.manifest is None else int(self.manifest["step"])

    @cached_property
    def history(self) -> History:
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


# --------------------------------------------------------------------------- weights


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
    return _canonical_safetensors(save_safetensors(tensors, metadata=meta))


def _state_bytes(state: TrainState) -> bytes:
    buf = io.BytesIO()
    torch.save({f.name: getattr(state, f.name) for f in fields(TrainState)}, buf)
    return buf.getvalue()


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


def _check_finite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise IntegrityError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                             "the weights are damaged: restore the file or train the run again")


# --------------------------------------------------------------------------- the checkpoint journal


@dataclass
class _Snapshot:
    """Files of one checkpoint, read consistently (see the module docstring)."""

    manifest: dict[str, Any] | None
    files: dict[str, bytes]
    changed: list[str]  # files whose bytes differ from the manifest's checksum
    missing: list[str]  # files the manifest lists that are not there


def _read_opt(path: Path) -> bytes | None:
    try:
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
        raise RunDirError(f"{run_dir / MANIFEST_FILE}: damaged (not a vaelab checkpoint manifest); restore it, or "
                          "delete it to load the files without their checksums")
    return manifest


def _snapshot(run_dir: Path, names: Iterable[str], attempts: int = 500) -> _Snapshot:
    """Read ``names`` of the current checkpoint so that all come from one commit.

    The manifest is read before and after the files; if a writer committed in between it
    differs and the read is repeated (a commit takes milliseconds).
    """
    names = tuple(names)
    for _ in range(attempts):
        before = _read_current(run_dir, MANIFEST_FILE)
        if before is None:  # a run from before manifests: the files as they are
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
    state: TrainState | None = None, condition: Condition | None = None,
) -> dict[str, Any]:
    """Commit config, weights and (when given) history, training state and condition spec as
    one checkpoint; returns its manifest. The caller holds the run's lock (:func:`claim`)."""
    run_dir = Path(run_dir)
    files = {CONFIG_FILE: (config.to_json() + "\n").encode("utf-8"), WEIGHTS_FILE: weights_bytes(model)}
    if condition is not None:
        files[CONDITION_FILE] = (json.dumps(condition.to_dict(), indent=2) + "\n").encode("utf-8")
    if history is not None:
        files[HISTORY_FILE] = history.to_csv().encode("utf-8")
    if state is not None:
        files[STATE_FILE] = _state_bytes(state)
    return _commit(run_dir, files, step=0 if state is None else state.step)


def write_history(run_dir: str | Path, history: History) -> None:
    """Replace the history of the current checkpoint (e.g. to record the epoch that diverged)."""
    run_dir = Path(run_dir)
    current = _snapshot(run_dir, ()).manifest
    _commit(run_dir, {HISTORY_FILE: history.to_csv().encode("utf-8")}, step=0 if current is None else current["step"])


# --------------------------------------------------------------------------- ownership and lock


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def is_owned(path: str | Path) -> bool:
    """True when vaelab made this folder (it holds the ownership marker)."""
    return (Path(path) / MARKER_FILE).is_file()


def _lock_fd(fd: int) -> bool:
    """Try to take an exclusive lock on an open file; False when another process holds it.

    The kernel releases the lock when its holder exits, however it exits, so the lock of a
    killed training is simply taken over: there is no stale lock to detect or clean up.
    """
    if sys.platform == "win32":  # no fcntl there
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


class RunLock:
    """The exclusive write lock of a run directory, held while training or saving into it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunLockedError naming the process that holds it."""
        path = self.run_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise WriteError(f"{self.run_dir}: cannot write in the run directory ({_why(err)}); choose an --out "
                             "in a writable folder") from None
        if not _lock_fd(fd):
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunLockedError(f"{self.run_dir}: another vaelab process ({holder}) is writing this run; wait for "
                                 "it to finish, or choose another --out")
        self._fd = fd
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode("utf-8")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
            # A folder that takes no new file (read-only, immutable) fails here, before training.
            probe = self.run_dir / f".vaelab-probe.{secrets.token_hex(4)}{_TMP_SUFFIX}"
            _write_new(probe, b"")
            probe.unlink()
        except OSError as err:
            self.release()
            raise WriteError(f"{self.run_dir}: cannot write in the run directory ({_why(err)}); make it "
                             "writable or choose another --out") from None
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown process"


def is_locked(run_dir: str | Path) -> bool:
    """True while another process holds the run's lock (i.e. it is training into it)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        return not _lock_fd(fd)
    finally:
        os.close(fd)  # also releases the probe lock when it was taken


def check_run_dir(run_dir: str | Path, *, overwrite: bool = False) -> None:
    """Refuse an --out that cannot take a new run, reading only (nothing is created or removed).

    Train calls it before reading any data, and :func:`claim` again under the lock. A folder
    that is not empty needs ``overwrite``, and then must be a vaelab run (hold the marker):
    vaelab never deletes files of a folder it did not make.
    """
    run_dir = Path(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        raise RunDirError(f"{run_dir}: is a symbolic link to {os.readlink(run_dir)}, which does not exist; create "
                          "that folder or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: exists and is a file; choose another --out")
    if not run_dir.is_dir():
        return
    if is_locked(run_dir):
        raise RunLockedError(f"{run_dir}: another vaelab process is training into this run right now; wait "
                             "for it to finish, or choose another --out")
    contents = [p for p in run_dir.iterdir() if p.name not in (LOCK_FILE, MARKER_FILE)]
    if not contents:
        return
    if not overwrite:
        raise RunDirError(f"{run_dir}: already exists and is not empty; choose another --out, pass --overwrite "
                          "to replace it, or --resume to continue it")
    if not is_owned(run_dir):
        raise RunDirError(f"{run_dir}: is not empty and was not made by vaelab (no {MARKER_FILE} marker), so "
                          "--overwrite will not delete anything in it; choose another --out, or empty the folder "
                          "yourself (runs from vaelab 0.1.0 have no marker either)")


def claim(run_dir: str | Path, *, overwrite: bool = False) -> RunLock:
    """Take a folder for a new run: create it, lock it, clear the files of a replaced run
    (only those a run writes), write the ownership marker. Returns the held lock."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite=overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"{run_dir}: cannot create the run directory ({_why(err)}); choose an --out in a "
                         "writable folder") from None
    lock = RunLock(run_dir).acquire()
    try:
        contents = [p for p in run_dir.iterdir() if p.name not in (LOCK_FILE, MARKER_FILE)]
        if contents and not (overwrite and is_owned(run_dir)):  # claimed by someone else meanwhile
            raise RunDirError(f"{run_dir}: was filled by another process meanwhile; choose another --out")
        for name in RUN_ARTIFACTS:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for tmp in run_dir.glob(f".*{_TMP_SUFFIX}"):
            tmp.unlink()
        write_json(run_dir / MARKER_FILE, {
            "format": MARKER_FORMAT,
            "note": "this folder is a vaelab run; `vaelab train --overwrite` may replace the files vaelab wrote here",
        })
    except OSError as err:
        lock.release()
        raise WriteError(f"{run_dir}: cannot prepare the run directory ({_why(err)})") from None
    except BaseException:
        lock.release()
        raise
    return lock


def check_output_path(path: str | Path, *, allow: Iterable[str] = ()) -> Path:
    """Refuse an output file that is a folder or one of a run directory's own files.

    ``allow`` lists run-relative names the calling command exists to write (the report
    command writes ``report.html``). Symbolic links are followed, so a link to a run's file
    counts as that file.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: is a folder; give the name of a file to write")
    allowed = set(allow)
    target = path.resolve()
    for folder in target.parents:
        if is_owned(folder) or is_run_dir(folder):
            rel = target.relative_to(folder)
            if rel.parts and rel.parts[0] in OWNED_NAMES and rel.as_posix() not in allowed:
                raise RunDirError(f"{path}: is the run's own {rel.as_posix()} (run {folder}); no command writes "
                                  "over a run's files: choose another file name")
    return path


# --------------------------------------------------------------------------- save / load


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
    # A fixed seed builds the placeholder weights inside a fork of the RNG, so loading a run
    # never draws from (advances) the caller's global torch RNG; they are all overwritten below.
    model = build_model(config.model, x_dim, cond_dim, seed=0, cond_embed=embed)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise RunDirError(f"{run_dir}: weights do not match config.json ({err})") from None
    model = model.to(device)
    condition = _parse_condition(run_dir, snap.files.get(CONDITION_FILE), model)
    return Run(path=run_dir, config=config, model=model, condition=condition, manifest=snap.manifest,
               history_bytes=snap.files.get(HISTORY_FILE))


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
                             "or damaged, so the run cannot be resumed exactly. The model still loads; train again "
                             "with --overwrite to redo the run")
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
                          "written by vaelab (nothing in it was run). The model still loads; train again with "
                          "--overwrite to redo the run") from None
    return state


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
    data = _snapshot(run_dir, (HISTORY_FILE,)).files.get(HISTORY_FILE)
    return History() if data is None else _parse_history(run_dir / HISTORY_FILE, data)


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


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load a run directory: the model (eval mode) and config of its current checkpoint,
    verified against the checksums the checkpoint recorded, and, for a conditional model,
    its condition spec. History, metrics and any failure record are read when first used.

    Never draws from the global torch RNG and never writes: a read-only run loads.
    """
    run = _load_run(Path(run_dir), device)
    run.model.eval()
    return run

