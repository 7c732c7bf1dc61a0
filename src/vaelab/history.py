"""The per-epoch training record of a run: one row per epoch, every term the run has, CSV on disk."""

from __future__ import annotations

import csv
import io
import math

from vaelab.errors import InputError


class History:
    """Per-epoch training record: a list of rows (dicts with the same keys), CSV on disk.

    ``lr`` is the learning rate of the epoch's last step, ``skipped`` the steps of the epoch
    that ``nonfinite = "skip"`` skipped, ``grad_norm`` the largest gradient norm of the epoch
    (over all parameters, before any clipping; NaN when a step had a non-finite gradient),
    ``beta`` the mean over the epoch's steps of the KL weight β the schedule gave
    (``vaelab.schedules.beta_at``; skipped steps included; an autoencoder has no KL to weight).
    """

    COLUMNS = ("epoch", "step", "loss", "recon", "kl", "diversity", "seconds", "lr", "skipped", "grad_norm", "beta")
    INT_COLUMNS = ("epoch", "step", "skipped")
    # Columns added after 0.1.0, and what a history.csv written before them reads as.
    LATER_COLUMNS = {"lr": math.nan, "skipped": 0, "grad_norm": math.nan, "beta": math.nan}

    def __init__(self, rows: list[dict[str, float]] | None = None) -> None:
        self.rows: list[dict[str, float]] = list(rows or [])

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def column(self, name: str) -> list[float]:
        """All values of one column, in epoch order."""
        if name not in self.COLUMNS:
            raise KeyError(f"unknown history column {name!r}; columns are {', '.join(self.COLUMNS)}")
        return [float(r[name]) for r in self.rows]

    @property
    def last(self) -> dict[str, float] | None:
        return self.rows[-1] if self.rows else None

    def has_failure(self) -> bool:
        """True when some recorded loss is NaN or infinite."""
        return any(not math.isfinite(float(r["loss"])) for r in self.rows)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (int(row[k]) if k in self.INT_COLUMNS else repr(float(row[k])))
                             for k in self.COLUMNS})
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> History:
        """Parse :meth:`to_csv` output; ValueError says which column / row is wrong."""
        reader = csv.DictReader(io.StringIO(text))
        missing = [k for k in cls.COLUMNS if k not in (reader.fieldnames or []) and k not in cls.LATER_COLUMNS]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}; expected {','.join(cls.COLUMNS)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            for name, default in cls.LATER_COLUMNS.items():  # a history.csv written before these columns
                raw.setdefault(name, repr(default))
            try:
                rows.append({k: (int(raw[k]) if k in cls.INT_COLUMNS else float(raw[k])) for k in cls.COLUMNS})
            except (TypeError, ValueError):
                raise InputError(f"line {line} holds a value that is not a number") from None
        return cls(rows)
