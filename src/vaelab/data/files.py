"""User data from a file of points: ``.npy`` (N, D), ``.npz`` (one array, or ``x`` [+ ``labels``])
or ``.csv`` (numbers, optional header row). Any dimension D, not only 2.
"""

from __future__ import annotations

import csv
import errno
import os
import stat
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vaelab.data.dataset import Dataset
from vaelab.errors import InputError


class DataFileError(InputError):
    """A user data file that cannot be read as an (N, D) table of finite numbers."""


SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv")


def _read_csv(
    path: Path, label_column: str | None, condition_columns: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str] | None, dict[str, np.ndarray]]:
    """Parse a numeric CSV: returns values (N, D), labels (N,) or None, label names, column
    names, and the condition columns {name: (N,)}, which are left out of the values."""
    with path.open(newline="") as fh:
        rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataFileError(f"{path}: the file is empty; expected rows of numbers separated by commas")

    def is_number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    header: list[str] | None = None
    if not all(is_number(cell) for cell in rows[0]):
        header = [cell.strip() for cell in rows[0]]
        rows = rows[1:]
        if not rows:
            raise DataFileError(f"{path}: only a header row was found; expected data rows below it")
    width = len(rows[0]) if header is None else len(header)
    for i, row in enumerate(rows):
        if len(row) != width:
            line = i + (2 if header else 1)
            raise DataFileError(
                f"{path}: line {line} has {len(row)} values but the {'header' if header else 'first line'} "
                f"has {width}; every row must have the same number of columns (ragged CSV)"
            )
    label_idx: int | None = None
    if label_column is not None:
        if header is None:
            raise DataFileError(f"{path}: label column {label_column!r} requested, but the CSV has no header row")
        if label_column not in header:
            raise DataFileError(f"{path}: no column named {label_column!r}; columns are {header}")
        label_idx = header.index(label_column)
    cond_idx: dict[str, int] = {}
    for name in condition_columns:
        if header is None:
            raise DataFileError(f"{path}: condition column {name!r} requested, but the CSV has no header row")
        if name not in header:
            raise DataFileError(f"{path}: no column named {name!r} to condition on; columns are {header}")
        if name == label_column:
            raise DataFileError(f"{path}: column {name!r} cannot be both the label column and a condition column")
        cond_idx[name] = header.index(name)
    held_out = set(cond_idx.values()) | ({label_idx} if label_idx is not None else set())

    labels = names = None
    if label_idx is not None:
        raw = [row[label_idx].strip() for row in rows]
        empty = [i for i, v in enumerate(raw) if not v]
        if empty:  # an empty cell would become a class named "" (audit UF48)
            first = empty[0] + (2 if header else 1)
            raise DataFileError(f"{path}: {len(empty)} of {len(raw)} rows have an empty label in column "
                                f"{label_column!r} (first on line {first}); fill them in or remove those rows")
        names = sorted(set(raw), key=lambda s: (not is_number(s), float(s) if is_number(s) else 0.0, s))
        lookup = {name: i for i, name in enumerate(names)}
        labels = np.array([lookup[v] for v in raw], dtype=np.int64)
    values = []
    for i, row in enumerate(rows):
        line = i + (2 if header else 1)
        try:
            values.append([float(cell) for j, cell in enumerate(row) if j != label_idx])
        except ValueError as err:
            j = next(j for j, cell in enumerate(row) if j != label_idx and not is_number(cell))
            if header is None:
                raise DataFileError(f"{path}: line {line} holds a value that is not a number ({err})") from None
            # A column of words is most often a class label (newcomer review: "species").
            fix = (f"if it holds class labels, train with --label-column {header[j]}" if label_column is None
                   else f"--label-column names {label_column!r} as the one label column")
            raise DataFileError(f"{path}: column {header[j]!r} holds a value that is not a number ({row[j].strip()!r} "
                                f"on line {line}); only numbers can be data: {fix}, or remove the column from the "
                                "file") from None
    table = np.asarray(values, dtype=np.float64)  # every column but the label column
    # Positions of the kept / condition columns inside ``table`` (the label column is gone).
    # (enumerate, not pos.index: that was quadratic in the width, and a 2,000,000-column line hung, audit UF35)
    pos = [j for j in range(width) if j != label_idx]
    at = {j: i for i, j in enumerate(pos)}
    keep = [i for i, j in enumerate(pos) if j not in held_out]
    if not keep:
        raise DataFileError(f"{path}: no data columns left once label and condition columns are taken out")
    conditions = {name: table[:, at[j]] for name, j in cond_idx.items()}
    for name, column in conditions.items():  # named here, with the file, column and line (audit TR38)
        with np.errstate(over="ignore", invalid="ignore"):
            bad = ~np.isfinite(column.astype(np.float32))
        if bad.any():
            first = int(np.argmax(bad)) + (2 if header else 1)
            raise DataFileError(f"{path}: condition column {name!r} holds {int(bad.sum())} NaN or infinite values "
                                f"in float32 (first on line {first}); a condition must be a finite number in every "
                                "row: fill them in or remove those rows")
    columns = None if header is None else [header[pos[k]] for k in keep]
    return table[:, keep], labels, names, columns, conditions


_EXPECTED = "expects a .npy, .npz or .csv file of points (N rows x D columns)"


def check_data_file(path: Path, option: str = "--data") -> None:
    """Refuse a data path that is not a regular file, saying what it is: missing, a folder, a
    symbolic link loop, a named pipe or a device (reading those would block or never end)."""
    from vaelab.checkpoint.atomic import file_kind  # a leaf module (errors only), imported lazily: see save_points

    try:
        st = os.stat(path)
    except FileNotFoundError:
        target = f" (a symbolic link to {os.readlink(path)}, which does not exist)" if path.is_symlink() else ""
        raise DataFileError(f"{path}: no such file{target}; {option} {_EXPECTED}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataFileError(f"{path}: is a symbolic link loop (it points back to itself); {option} "
                                f"{_EXPECTED}") from None
        raise DataFileError(f"{path}: cannot be read ({err.strerror or err}); {option} {_EXPECTED}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataFileError(f"{path}: is a folder; {option} {_EXPECTED}")
    if not stat.S_ISREG(st.st_mode):
        link = f" ({path} -> {os.path.realpath(path)})" if path.is_symlink() else ""
        raise DataFileError(f"{path}: is {file_kind(st.st_mode)}{link}, not a regular file; {option} {_EXPECTED}")


def load_points(
    path: str | Path, *, label_column: str | None = None, condition_columns: Sequence[str] = (),
    option: str = "--data",
) -> Dataset:
    """Read a user file of points into a Dataset with x of shape (N, D).

    ``.npz`` files may hold a single array, or arrays named ``x`` and optionally ``labels``.
    For CSV, a first row that is not all numbers is taken as a header; ``label_column`` names
    a header column to use as class labels (any strings; sorted into label values), and
    ``condition_columns`` numeric header columns that are held out of x and kept as
    ``extras["column:NAME"]`` (N,), the continuous condition of a conditional model.
    ``option`` names the command-line option the path came from, in errors.
    """
    path = Path(path)
    check_data_file(path, option)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataFileError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    labels = names = None
    columns: list[str] | None = None  # a CSV header's names of the data columns
    conditions: dict[str, np.ndarray] = {}
    if suffix != ".csv" and condition_columns:
        raise DataFileError(f"{path}: condition columns can only be named for CSV files with a header row")
    try:
        if suffix == ".csv":
            arr, labels, names, columns, conditions = _read_csv(path, label_column, condition_columns)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                if "x" in keys:
                    arr = npz["x"]
                    labels = npz["labels"].astype(np.int64) if "labels" in keys else None
                elif len(keys) == 1:
                    arr = npz[keys[0]]
                else:
                    raise DataFileError(
                        f"{path}: holds arrays {keys}; expected one array, or one named 'x' (and optionally 'labels')"
                    )
    except DataFileError:
        raise
    except (zipfile.BadZipFile, zlib.error) as err:
        raise DataFileError(f"{path}: not a valid .npz (zip) file ({err}); the file is damaged or truncated: "
                            "save it again with numpy.savez") from None
    except EOFError:  # numpy on a 0-byte .npy; click would report it as "Aborted."
        raise DataFileError(f"{path}: the file is empty (0 bytes); expected a {suffix} array of numbers") from None
    except ValueError as err:
        if "pickle" in str(err):  # numpy's advice (allow_pickle) is not one vaelab can take: never unpickled
            raise DataFileError(f"{path}: is not a {suffix} array of numbers (it would need unpickling, which "
                                "vaelab never does); save the points with numpy.save") from None
        raise DataFileError(f"{path}: could not be read as {suffix} ({err})") from None
    except OSError as err:
        raise DataFileError(f"{path}: could not be read as {suffix} ({err})") from None
    if suffix != ".csv" and label_column is not None:
        raise DataFileError(
            f"{path}: a label column can only be named for CSV files; for .npz store an array named 'labels'"
        )
    if arr.dtype.names:  # a structured array: named fields, one record per row
        raise DataFileError(f"{path}: holds a structured array with fields {', '.join(arr.dtype.names)}; save a plain "
                            "(N, D) array of numbers instead (e.g. np.column_stack([a[f] for f in a.dtype.names]))")
    if arr.ndim != 2:
        raise DataFileError(
            f"{path}: expected a 2-D table of shape (N, D), found an array of shape {arr.shape} (rank {arr.ndim})"
        )
    if not arr.dtype.isnative:  # a valid big-endian file (">f8"): torch takes native byte order only
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataFileError(f"{path}: holds complex numbers (dtype {arr.dtype}); a data point is a row of real "
                            "numbers: store the real and imaginary parts as separate columns")
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_:
        raise DataFileError(f"{path}: expected numbers, found dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataFileError(f"{path}: the table is empty (shape {arr.shape})")
    # Checked in float32, the precision vaelab computes in: 1e39 is finite in float64 but inf in float32.
    with np.errstate(over="ignore", invalid="ignore"):
        bad = ~np.isfinite(arr.astype(np.float32))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataFileError(
            f"{path}: {int(bad.sum())} values are NaN or infinite (first at row {row}, column {col}) in float32, "
            "the precision vaelab computes in (values beyond ±3.4e38 overflow to inf); remove, impute or "
            "rescale them"
        )
    if labels is not None and labels.shape != (arr.shape[0],):
        raise DataFileError(f"{path}: 'labels' has shape {labels.shape}, expected ({arr.shape[0]},)")
    x = torch.as_tensor(arr, dtype=torch.float32)
    ds = Dataset(
        name=f"file:{path}", x=x,
        labels=None if labels is None else torch.as_tensor(labels),
        label_names=names, columns=columns,
    )
    ds.extras["radius"] = x.norm(dim=1)
    for name, values in conditions.items():
        ds.extras[f"column:{name}"] = torch.as_tensor(values, dtype=torch.float32)
    return ds


def save_points(
    path: str | Path, values: np.ndarray, columns: list[str] | None = None, *,
    inputs: Sequence[str | Path] = (), what: str = "--out",
) -> Path:
    """Write an (N, K) array as ``.npy`` or ``.csv`` (with a header row when ``columns`` is given).

    Through vaelab's one file writer (:mod:`vaelab.checkpoint.atomic`): a temporary file beside
    ``path``, fsynced and renamed, so a full disk or Ctrl-C leaves an existing file as it was;
    a special file, a folder or one of ``inputs`` (the command's input files) is refused.
    """
    from vaelab.checkpoint.atomic import atomic_file  # a leaf module (errors only): see its docstring

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".csv"):
        raise DataFileError(f"{path}: cannot write {suffix or 'a file without suffix'}; use a .npy or .csv file name")
    if values.ndim != 2:
        raise InputError(f"expected an (N, K) array to save, got shape {values.shape}")
    with atomic_file(path, inputs=inputs, what=what) as fh:
        if suffix == ".npy":
            np.save(fh, values)
        else:
            header = ",".join(columns) if columns else ""
            np.savetxt(fh, values, delimiter=",", header=header, comments="", fmt="%.9g")
    return path
