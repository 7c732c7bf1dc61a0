"""Conditions a user gives in a file, one per sample / point, read into raw labels or values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from vaelab.conditions.spec import Condition, ConditionError


def read_condition_file(path: str | Path, condition: Condition) -> Tensor:
    """Conditions from a file, one per sample / point: raw labels (N,) or values (N, C).

    ``.npy``: an (N,) or (N, C) array. Text (``.csv``, ``.txt``, other): one condition per
    line; blank lines and ``#`` comments are skipped. For continuous conditions a first line
    that is not numbers is taken as a header; a line holds C comma-separated numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise ConditionError(f"{path}: no such file of conditions")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ConditionError(f"{path}: cannot be read as .npy ({err})") from None
        if arr.ndim == 2 and arr.shape[1] == 1 and condition.discrete:
            arr = arr[:, 0]
        if arr.ndim not in (1, 2) or (condition.discrete and arr.ndim != 1):
            raise ConditionError(f"{path}: expected an (N,) array of labels or an (N, C) array of values, "
                                 f"got shape {arr.shape}")
        if arr.ndim == 1:
            items: list[str] = [str(int(v)) if float(v).is_integer() else str(v) for v in arr.tolist()]
        else:
            items = [",".join(repr(float(u)) for u in row) for row in arr.tolist()]
    else:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        items = [ln for ln in lines if ln and not ln.startswith("#")]
        if items and not condition.discrete:
            try:
                [float(v) for v in items[0].split(",")]
            except ValueError:
                items = items[1:]  # header row
    if not items:
        raise ConditionError(f"{path}: holds no conditions; expected one per line")
    try:
        return condition.parse(items)
    except ConditionError as err:
        raise ConditionError(f"{path}: {err}") from None
