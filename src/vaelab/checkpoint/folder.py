"""Whose folder it is: the ownership marker, claiming a folder for a new run, and output paths."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from vaelab.checkpoint.atomic import _TMP_SUFFIX, WriteError, _why, check_target, write_json
from vaelab.checkpoint.layout import (
    CONFIG_FILE,
    LOCK_FILE,
    MARKER_FILE,
    MARKER_FORMAT,
    OWNED_NAMES,
    RUN_ARTIFACTS,
    WEIGHTS_FILE,
    RunDirError,
    RunLockedError,
)
from vaelab.checkpoint.lock import RunLock, is_locked


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def is_owned(path: str | Path) -> bool:
    """True when vaelab made this folder (it holds the ownership marker)."""
    return (Path(path) / MARKER_FILE).is_file()


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


def check_output_path(path: str | Path, *, allow: Iterable[str] = (), inputs: Iterable[str | Path] = (),
                      what: str = "--out") -> Path:
    """Refuse, before any work, an output file that the one writer must not replace: a folder,
    a special file, a path under a plain file, one of the command's ``inputs``
    (:func:`vaelab.checkpoint.atomic.check_target`), or one of a run directory's own files.

    ``allow`` lists run-relative names the calling command exists to write (the report
    command writes ``report.html``). Symbolic links are followed, so a link to a run's file
    counts as that file.
    """
    path = Path(path)
    target = check_target(path, inputs=inputs, what=what)
    allowed = set(allow)
    for folder in target.parents:
        if is_owned(folder) or is_run_dir(folder):
            rel = target.relative_to(folder)
            if rel.parts and rel.parts[0] in OWNED_NAMES and rel.as_posix() not in allowed:
                raise RunDirError(f"{path}: is the run's own {rel.as_posix()} (run {folder}); no command writes "
                                  "over a run's files: choose another file name")
    return path
