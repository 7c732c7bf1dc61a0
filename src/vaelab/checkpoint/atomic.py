"""The one file writer: every file vaelab writes (run files, figures, reports, samples, codes,
sweep tables) goes through :func:`atomic_file` / :func:`atomic_write_bytes`.

The bytes go to a temporary file in the target's folder (same file system), are fsynced, and
the temporary file is renamed over the real name; the folder is fsynced after the rename. A
reader (or a crash, a full disk, Ctrl-C) sees the old file or the new one, never a part, and on
any failure the old file is left byte for byte and the temporary file removed.

Before anything is written the target is checked (:func:`check_target`): a name that is a
folder, a special file (named pipe, device such as ``/dev/full``, socket), a path under a
plain file, or one of the command's own input files is refused, because renaming over it
would destroy something that is not vaelab's output. A symbolic link to a regular file is
written through (the link stays a link). This module imports nothing of vaelab but its error
types, so every layer (the data readers' ``save_points`` included) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from vaelab.errors import InputError

_TMP_SUFFIX = ".vaelab-tmp"


class WriteError(InputError):
    """A file could not be written; the message names the file the caller asked for."""


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


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a named pipe (FIFO)", "a character device" ...)."""
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def check_target(path: str | Path, *, inputs: Iterable[str | Path] = (), what: str = "") -> Path:
    """The file a write to ``path`` would replace, after refusing what must not be replaced.

    Refused, with a message naming ``path``: an empty name; a folder; an existing special
    file (FIFO, device, socket: renaming over it would destroy it, as ``--out /dev/full`` once
    did); a path under a plain file; a symbolic link loop; and a file that is one of
    ``inputs`` (the command's own input files, compared as files, so another spelling or a
    hard link counts). A symbolic link is followed: the returned path is the file it names.
    ``what`` is the option that gave the path ("--out"), used in messages.
    """
    label = f" ({what})" if what else ""
    if str(path) in ("", "."):
        raise WriteError(f"the output file name{label} is empty; give the name of a file to write")
    path = Path(path)
    try:
        target = Path(os.path.realpath(path, strict=False))
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise WriteError(f"{path}: is a symbolic link loop; give the name of a file to write") from None
        if err.errno == errno.ENOTDIR:  # a plain file stands where a folder is needed
            raise WriteError(_under_file(path)) from None
        raise WriteError(f"{path}: cannot be checked for writing ({_why(err)})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise WriteError(f"{path}: is a folder; give the name of a file to write")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise WriteError(f"{path}: is {file_kind(st.st_mode)}, not a regular file; vaelab writes its output "
                         "to a new regular file and renames it into place, which would replace this one: "
                         "give the name of a regular file")
    if st is None:
        for parent in target.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise WriteError(_under_file(path, parent))
                break
    for source in inputs:
        with contextlib.suppress(OSError):
            if st is not None and os.path.samefile(path, source):
                raise WriteError(f"{path}{label}: is the command's own input {source}; writing the output there "
                                 "would replace the input: choose another output file")
    return target


def _under_file(path: Path, parent: Path | None = None) -> str:
    if parent is None:
        parent = next((p for p in Path(os.path.abspath(path)).parents if p.exists() and not p.is_dir()), path.parent)
    return (f"{path}: cannot write (not a folder: {parent} is a file, so nothing can be created inside it); "
            "choose another output path")


@contextlib.contextmanager
def atomic_file(path: str | Path, *, inputs: Iterable[str | Path] = (), what: str = "") -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is fsynced and
    renamed over ``path``. On any error (a full disk, Ctrl-C) the temporary file is removed
    and an existing ``path`` is left as it was; OSErrors become a WriteError naming ``path``.

    The target is checked first (:func:`check_target`). An existing file keeps its permission
    bits; a new one gets 0666 minus the umask.
    """
    asked = Path(path)
    target = check_target(asked, inputs=inputs, what=what)
    existed = target.is_file()
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
    fh: IO[bytes] | None = None
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            fh = os.fdopen(fd, "wb")
            if existed:
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        except FileExistsError:
            raise WriteError(_under_file(asked)) from None
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as err:
        _discard(fh, tmp)
        kept = "the previous file is unchanged" if existed else "nothing was written"
        if err.errno == errno.ENOTDIR:
            raise WriteError(_under_file(asked)) from None
        raise WriteError(f"{asked}: cannot write ({_why(err)}); {kept}. Check that the folder is writable and "
                         "the disk is not full, or choose another path") from None
    except BaseException:
        _discard(fh, tmp)
        raise


def _discard(fh: IO[bytes] | None, tmp: Path) -> None:
    if fh is not None:
        with contextlib.suppress(OSError):
            fh.close()
    with contextlib.suppress(OSError):
        tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes, *, inputs: Iterable[str | Path] = (), what: str = "") -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file` (checked target, temporary file,
    fsync, rename; the old file survives any failure)."""
    with atomic_file(path, inputs=inputs, what=what) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, *, inputs: Iterable[str | Path] = (), what: str = "") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), inputs=inputs, what=what)


def atomic_create_text(path: str | Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; returns whether this call created it.

    Of several processes creating the same file at once (the shares of a sweep on a shared
    file system), exactly one succeeds and every reader sees the whole file or none: the text
    is written to a temporary file first, then linked to ``path`` (a hard link fails if the
    name is taken, where a rename would replace it).
    """
    target = Path(path)
    check_target(target)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
    try:
        with open(tmp, "xb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, target)
        _fsync_dir(target.parent)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        raise WriteError(f"{target}: cannot write ({_why(err)}); check that the folder is writable and the disk is "
                         "not full, or choose another path") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
