"""The lock a training holds on its run directory (flock on ``.vaelab-lock``; freed when the
process exits, so a killed training's lock is taken over). The file is removed when the lock is
released, so a finished run does not look like one still training; a killed training's file stays,
and is taken over."""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from vaelab.checkpoint.atomic import _TMP_SUFFIX, WriteError, _why, _write_new
from vaelab.checkpoint.layout import LOCK_FILE, RunLockedError


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
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except IsADirectoryError:  # audit RO26: named the run folder as unwritable
                raise WriteError(f"{path}: is a folder, not vaelab's lock file; remove it (vaelab creates the lock "
                                 "file itself)") from None
            except OSError as err:
                raise WriteError(f"{self.run_dir}: cannot write in the run directory ({_why(err)}); choose an --out "
                                 "in a writable folder") from None
            if not _lock_fd(fd):
                holder = _lock_holder(fd)
                os.close(fd)
                raise RunLockedError(f"{self.run_dir}: {holder} is writing this run (it holds {path}); wait for it "
                                     "to finish, or choose another --out")
            if _same_file(fd, path):
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the one now at the path
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
        """Remove the lock file, then free the lock (closing the descriptor frees it). Removed while
        still held, so that a process that opened it meanwhile sees it gone (``acquire``)."""
        if self._fd is not None:
            try:
                if _same_file(self._fd, self.run_dir / LOCK_FILE):
                    os.unlink(self.run_dir / LOCK_FILE)
            except OSError:  # a file that cannot go (Windows keeps open files) stays: it holds no lock
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file now at ``path``."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)


def _lock_holder(fd: int) -> str:
    """Who holds the lock, in words. The lock file's record is believed only where it can be:
    it travels with a copy of the run (``cp -a``), so a record of another machine, or of a
    process that no longer runs, is named as such instead of as the holder (audit RO27)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host, since = int(info["pid"]), str(info["host"]), str(info["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
    if host != socket.gethostname():
        return (f"another process (the lock file names pid {pid} on {host}, since {since}: another machine, or a "
                "record copied with the run)")
    if not _pid_alive(pid):
        return (f"another process (not the one the lock file names, pid {pid}, since {since}, which is no longer "
                "running: its record was copied with the run or left by a killed process)")
    return f"another vaelab process (pid {pid} on {host}, since {since})"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's process), or we cannot tell
    return True


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
