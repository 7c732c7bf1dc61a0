"""Read and write IDX files, the format of MNIST, Fashion-MNIST and KMNIST.

An IDX file is a 4-byte magic number, then one big-endian uint32 per dimension, then the
values in C order, big-endian (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS")::

    byte 0, 1   0x00 0x00
    byte 2      type code: 0x08 ubyte, 0x09 sbyte, 0x0B short, 0x0C int, 0x0D float, 0x0E double
    byte 3      number of dimensions
    then        ndim x uint32 sizes, then prod(sizes) values

The files are usually distributed gzipped. We detect gzip by its magic bytes (1f 8b) rather
than by the file name, so a renamed or un-gzipped file reads all the same.

This module only touches local files; downloading lives in :mod:`vaelab.data.download`.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaelab.errors import InputError

__all__ = ["IDX_TYPES", "IdxError", "read_idx", "write_idx"]

GZIP_MAGIC = b"\x1f\x8b"

# type code -> (big-endian numpy dtype as stored in the file, name used in messages).
# Every one of these has a torch dtype of the same width, so reading never widens.
IDX_TYPES: dict[int, tuple[np.dtype, str]] = {
    0x08: (np.dtype(">u1"), "ubyte"),
    0x09: (np.dtype(">i1"), "sbyte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}
# numpy kind + itemsize -> type code, for writing.
_CODE_OF: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, (dt, _) in IDX_TYPES.items()
}


class IdxError(InputError):
    """An IDX file is malformed: bad magic number, wrong payload length or broken gzip stream."""


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        # gzip raises BadGzipFile (an OSError) for a bad header, EOFError for a stream cut
        # short and zlib.error for corrupt deflate data: to the user they all mean the same.
        raise IdxError(
            f"{path}: starts like a gzip file but cannot be decompressed ({e}); the file is "
            f"corrupt or was only partly downloaded: delete it and download it again"
        ) from e


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Read an IDX file (plain or gzipped) into a tensor.

    Args:
        path: the file; gzip is detected from its first two bytes, not from its name.

    Returns:
        A tensor with the file's shape, e.g. (N, 28, 28) for images or (N,) for labels, and
        the dtype matching the IDX type code: uint8, int8, int16, int32, float32 or float64,
        in native byte order.

    Raises:
        FileNotFoundError: the file does not exist.
        IdxError: the magic number is wrong, the header is cut short, the payload length does
            not match the dimensions exactly, or the gzip stream is corrupt.
    """
    path = Path(path)
    data = _read_bytes(path)

    if len(data) < 4:
        raise IdxError(
            f"{path}: file is {len(data)} bytes long, too short for the 4-byte IDX magic "
            f"number; the file is truncated or not an IDX file"
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise IdxError(
            f"{path}: not an IDX file: magic number starts with bytes "
            f"{zero0:#04x} {zero1:#04x}, expected 0x00 0x00"
        )
    if code not in IDX_TYPES:
        known = ", ".join(f"{c:#04x} ({name})" for c, (_, name) in IDX_TYPES.items())
        raise IdxError(f"{path}: unknown IDX type code {code:#04x}; expected one of {known}")
    if ndim == 0:
        raise IdxError(f"{path}: IDX header says 0 dimensions; expected at least 1")

    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxError(
            f"{path}: header declares {ndim} dimensions, which needs {header_len} header "
            f"bytes, but the file has only {len(data)} bytes; the file is truncated"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype, type_name = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header_len
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise IdxError(
            f"{path}: expected {expected} bytes of data for shape {shape} ({type_name}), "
            f"found {found}; the file is {what}: delete it and download it again"
        )

    # astype copies into a writable, native-endian array that torch can own.
    values = np.frombuffer(data, dtype=dtype, offset=header_len).astype(dtype.newbyteorder("="))
    return torch.from_numpy(values.reshape(shape))


def write_idx(path: str | os.PathLike[str], array: Tensor | np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzipped when ``path`` ends in ``.gz``.

    Args:
        path: destination file; its parent folder must exist.
        array: tensor or array with at least one dimension (at most 255, sizes < 2**32) and
            dtype uint8, int8, int16, int32, float32 or float64.

    Raises:
        ValueError: unsupported dtype or number of dimensions.
    """
    path = Path(path)
    values = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    code = _CODE_OF.get((values.dtype.kind, values.dtype.itemsize))
    if code is None:
        supported = ", ".join(dt.newbyteorder("=").name for dt, _ in IDX_TYPES.values())
        raise InputError(
            f"cannot write dtype {values.dtype} to IDX file {path}: the format supports only "
            f"{supported}; convert the array first (e.g. .astype('int32'))"
        )
    if not 1 <= values.ndim <= 255:
        raise InputError(
            f"cannot write a {values.ndim}-dimensional array to IDX file {path}: the format "
            f"needs between 1 and 255 dimensions"
        )
    if any(n >= 2**32 for n in values.shape):
        raise InputError(f"cannot write shape {values.shape} to {path}: IDX sizes are uint32")

    header = bytes([0, 0, code, values.ndim]) + b"".join(
        n.to_bytes(4, "big") for n in values.shape
    )
    payload = np.ascontiguousarray(values, dtype=IDX_TYPES[code][0]).tobytes()
    content = header + payload
    if path.name.endswith(".gz"):
        # mtime=0 keeps the bytes (and so their checksum) identical from run to run.
        content = gzip.compress(content, mtime=0)
    from vaelab.checkpoint.atomic import atomic_write_bytes  # the one file writer (a leaf module)

    atomic_write_bytes(path, content)
