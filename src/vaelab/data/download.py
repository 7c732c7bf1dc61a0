"""Downloading dataset files: where they live, and URL + MD5 -> a file moved into place atomically.

Files are looked for in ``<root>/<name>/`` where ``<root>`` is, in order: the ``data_dir``
argument, the ``VAELAB_DATA_DIR`` environment variable, ``$XDG_CACHE_HOME/vaelab`` or
``~/.cache/vaelab``. A download is checked against its published MD5 and only then moved
into place, so an interrupted or bad download never leaves a file under the final name.
Nothing here prints: progress goes to an optional callback, news to :mod:`logging`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vaelab.errors import InputError, VaelabError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "VAELAB_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation, not for the whole file
CHUNK_BYTES = 1 << 16

# progress(bytes_done, bytes_total, filename); bytes_total is None when the server sends no
# Content-Length. Called once with bytes_done = 0 and then after every chunk.
ProgressFn = Callable[[int, int | None, str], None]


@dataclass(frozen=True)
class IdxResource:
    """One published file: its name (``.gz``) and the MD5 of exactly those gzipped bytes."""

    filename: str
    md5: str


class DatasetNotFoundError(VaelabError, FileNotFoundError):
    """The dataset's files are not on disk and could not (or may not) be downloaded."""


class ChecksumError(InputError):
    """A downloaded file's MD5 differs from the published one."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The root folder that holds one subfolder per dataset.

    Order: ``data_dir`` if given, else ``$VAELAB_DATA_DIR``, else ``$XDG_CACHE_HOME/vaelab``,
    else ``~/.cache/vaelab``. Empty environment variables count as unset. The folder need not
    exist yet.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if env := os.environ.get(DATA_DIR_ENV):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "vaelab"
    return Path.home() / ".cache" / "vaelab"


def dataset_folder(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<name>``: the folder where dataset ``name``'s files are looked for."""
    return resolve_data_dir(data_dir) / name


class _TransferError(OSError):
    """The server stopped sending before the announced Content-Length was reached."""


def _fetch(url: str, dest: Path, md5: str, progress: ProgressFn | None) -> None:
    """Stream ``url`` into ``dest``, atomically, if and only if its MD5 is ``md5``.

    The bytes go to a temporary file beside ``dest`` (same file system, so ``os.replace`` is
    atomic) and are renamed only after the checksum matches. Concurrent downloads of the same
    file (e.g. several torchrun ranks) each use their own temporary file and so cannot clash.

    Raises:
        urllib.error.URLError, OSError: network failure (including a transfer cut short).
        ChecksumError: the bytes arrived but their MD5 is wrong.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "vaelab"})
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            request, timeout=DOWNLOAD_TIMEOUT_S
        ) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            done = 0
            if progress is not None:
                progress(0, total, dest.name)
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total, dest.name)
            # http.client's read(n) returns b"" when the connection drops early instead of
            # raising IncompleteRead, so a cut transfer has to be detected here.
            if total is not None and done < total:
                raise _TransferError(
                    f"connection closed after {done} of {total} bytes of {dest.name}"
                )
            out.flush()
            os.fsync(out.fileno())
        found = digest.hexdigest()
        if found != md5:
            raise ChecksumError(
                f"downloaded {dest.name} from {url} but its MD5 is {found}, expected {md5}; "
                f"the mirror serves a different or damaged file"
            )
        # mkstemp creates the file readable by its owner only; a data folder is often shared.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        # On success tmp was renamed away; on any failure remove the partial file.
        tmp.unlink(missing_ok=True)


def _download(
    resource: IdxResource, folder: Path, base_urls: Sequence[str], progress: ProgressFn | None
) -> tuple[Path | None, list[str], list[ChecksumError]]:
    """Try each mirror in turn; return (path or None, failure notes, checksum errors)."""
    failures: list[str] = []
    bad_checksums: list[ChecksumError] = []
    dest = folder / resource.filename
    for base in base_urls:
        url = base.rstrip("/") + "/" + resource.filename
        logger.info("downloading %s from %s", resource.filename, url)
        try:
            _fetch(url, dest, resource.md5, progress)
        except ChecksumError as e:
            logger.warning("%s", e)
            bad_checksums.append(e)
            failures.append(f"{url}: {e}")
        except (OSError, ValueError, http.client.HTTPException) as e:
            # URLError, HTTPError and timeouts are OSErrors; ValueError is a malformed URL;
            # HTTPException covers protocol errors such as a bad status line.
            # HTTPError's str has the status code; other URLErrors wrap the socket error.
            wrapped = isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
            reason = e.reason if isinstance(e, urllib.error.URLError) and wrapped else e
            # info, not warning: the next mirror may well work, and if none does the error
            # raised below lists every failure.
            logger.info("could not download %s: %s", url, reason)
            failures.append(f"{url}: {reason}")
        else:
            logger.info("saved %s (MD5 verified)", dest)
            return dest, failures, bad_checksums
    return None, failures, bad_checksums
