"""The per-epoch training record of a run: one row per epoch, every term the run has, CSV on disk."""

from __future__ import annotations

import csv
import io
import math

from vaelab.errors import InputError

# Columns of a run trained with held-out points (``fit(..., heldout=...)``, every ``vaelab
# train``): the β = 1 ELBO on a fixed held-out subset at the end of an epoch, and its two terms.
HELDOUT_COLUMNS = ("heldout_elbo", "heldout_recon", "heldout_kl")


class History:
    """Per-epoch training record: a list of rows (dicts with the same keys), CSV on disk.

    ``lr`` is the learning rate of the epoch's last step, ``skipped`` the steps of the epoch
    that ``nonfinite = "skip"`` skipped, ``grad_norm`` the largest gradient norm of the epoch
    (over all parameters, before any clipping; NaN when a step had a non-finite gradient),
    ``beta`` the mean over the epoch's steps of the KL weight β the schedule gave
    (``vaelab.schedules.beta_at``; skipped steps included; an autoencoder has no KL to weight).
    Every named term of the objective is a column: "recon" and "kl" always, and any a
    family adds (e.g. "kl_1", "codebook") after the fixed ones, in the order first seen.

    Held-out columns (``HELDOUT_COLUMNS``), where training was given held-out points: the ELBO
    at β = 1 of a fixed subset of held-out points at the epoch's end, ``heldout_elbo`` (a bound
    on log p(x), higher is better, as metrics.json's "elbo"), and its terms ``heldout_recon``
    and ``heldout_kl`` (nats per point, as the training columns recon and kl, so that
    −heldout_elbo = heldout_recon + heldout_kl compares with recon + kl); an autoencoder has
    ``heldout_recon`` alone. NaN in an epoch that was not scored (small data sets are scored
    every few epochs, see ``vaelab.train.loop.heldout_every``) and in rows written before the
    columns existed.
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
        if name not in self.columns:
            raise KeyError(f"unknown history column {name!r}; columns are {', '.join(self.columns)}")
        # A column added during the run (held-out points given on resume) is NaN in earlier rows.
        return [float(r.get(name, math.nan)) for r in self.rows]

    @property
    def columns(self) -> tuple[str, ...]:
        """The fixed COLUMNS, then every extra term column the rows hold (first seen first)."""
        extra = dict.fromkeys(k for r in self.rows for k in r if k not in self.COLUMNS)
        return self.COLUMNS + tuple(extra)

    @property
    def last(self) -> dict[str, float] | None:
        return self.rows[-1] if self.rows else None

    def has_heldout(self) -> bool:
        """Whether some epoch was scored on held-out points (a finite ``heldout_*`` value)."""
        return any(math.isfinite(float(r.get(k, math.nan))) for r in self.rows for k in HELDOUT_COLUMNS)

    def has_failure(self) -> bool:
        """True when some recorded loss is NaN or infinite."""
        return any(not math.isfinite(float(r["loss"])) for r in self.rows)

    def to_csv(self) -> str:
        buf = io.StringIO()
        columns = self.columns
        writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:  # a term missing from a row (not in that epoch's objective) is NaN
            writer.writerow({k: (int(row[k]) if k in self.INT_COLUMNS else repr(float(row.get(k, math.nan))))
                             for k in columns})
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> History:
        """Parse :meth:`to_csv` output; ValueError says which column / row is wrong."""
        reader = csv.DictReader(io.StringIO(text))
        missing = [k for k in cls.COLUMNS if k not in (reader.fieldnames or []) and k not in cls.LATER_COLUMNS]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}; expected {','.join(cls.COLUMNS)}")
        columns = cls.COLUMNS + tuple(k for k in reader.fieldnames or [] if k not in cls.COLUMNS)
        rows = []
        for line, raw in enumerate(reader, start=2):
            for name, default in cls.LATER_COLUMNS.items():  # a history.csv written before these columns
                raw.setdefault(name, repr(default))
            try:
                rows.append({k: (int(raw[k]) if k in cls.INT_COLUMNS else float(raw[k])) for k in columns})
            except (TypeError, ValueError):
                raise InputError(f"line {line} holds a value that is not a number") from None
        return cls(rows)
