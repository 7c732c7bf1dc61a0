"""Atomic files: every file is written to a temporary name in its folder, fsynced and renamed
over its real name, so a reader sees the old file or the new one, never a part."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
