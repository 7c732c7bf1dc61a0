"""Conditions of a conditional VAE: from what a user names to the tensor c the model sees.

A conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using
Deep Conditional Generative Models") gives a condition c to both the encoder and the
decoder, and maximises the conditional ELBO

    log p(x|c) ≥ E_q(z|x,c)[log p(x|z,c)] - KL(q(z|x,c) ‖ p(z))        (Sohn et al., eq. 4)

with the prior p(z) = N(0, I) left unconditioned, as in most CVAEs. Because the decoder is
told c, the code z does not need to carry it: ideally z holds only what c does not say
(the position inside a mode, the style of a digit), which the latent-space figure shows.

Three kinds of condition, named by ``DataConfig.condition``:

``label``
    a class label (toy-mixture mode, MNIST digit, a CSV ``--label-column``, an image class
    folder). Encoded one-hot: c (N, K). The label list is saved with the run, so
    ``--condition 3`` and ``--condition "mode 3"`` mean the same after reloading.
``radius``
    the radius ‖x‖ of a 2D point, a continuous scalar: c (N, 1).
``column:NAME[,NAME...]``
    numeric CSV columns, held out of x and used as a continuous (vector) condition.

Continuous values are standardised with the training mean and standard deviation and then
go through a small embedding MLP inside the model (``ModelConfig.cond_embed``, default
1 → 16 → 16), so the embedding is trained and saved with the weights. The training range is
saved too: asking for values far outside it gives a ``ConditionRangeWarning`` (the model
will extrapolate, and nothing in training said how).

The :class:`Condition` spec is what a run saves (``condition.json``); ``fit_condition``
builds it from the training split, ``Condition.tensor`` turns a dataset into c and
``Condition.parse`` / ``read_condition_file`` turn what a user types into c, with errors
that say which labels or widths the model knows.

This module holds the spec and ``read_condition_file``; the metrics of how well samples
follow their condition are in :mod:`vaelab.conditions.metrics`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaelab.config import parse_kind
from vaelab.data.dataset import Dataset
from vaelab.errors import InputError, VaelabWarning

KINDS = ("label", "radius", "column:NAME[,NAME...]")
# A continuous value more than this share of the training span outside [low, high] is
# "far outside" and draws a warning (values a little past the edge are still data-like).
RANGE_MARGIN = 0.1



class ConditionError(InputError):
    """A condition that does not fit the run: unknown label, wrong width, wrong kind."""


class ConditionRangeWarning(VaelabWarning):
    """A continuous condition far outside the range the model was trained on."""


def _format(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


@dataclass
class Condition:
    """What a conditional run knows about its condition; saved as ``condition.json``.

    Attributes:
        kind: ``label``, ``radius`` or ``column:NAME[,NAME...]``.
        labels: discrete only: the name of every label value (index = label; c is one-hot).
        names: continuous only: one name per dimension of c (``["radius"]``, the columns).
        low, high: continuous only: per dimension, the smallest / largest training value.
        mean, std: continuous only: per dimension, the training mean and standard deviation
            used to standardise c before the embedding MLP.
        embed: continuous only: widths of the model's embedding MLP (empty: c is used raw).
    """

    kind: str
    labels: list[str] | None = None
    names: list[str] | None = None
    low: list[float] | None = None
    high: list[float] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    embed: list[int] = field(default_factory=list)

    @property
    def discrete(self) -> bool:
        return self.labels is not None

    @property
    def width(self) -> int:
        """Width of c as the model receives it: K labels (one-hot) or the number of values."""
        return len(self.labels) if self.labels is not None else len(self.names or [])

    @property
    def embed_widths(self) -> tuple[int, ...]:
        """Widths of the embedding MLP the model needs (none for one-hot labels)."""
        return () if self.discrete else tuple(self.embed)

    def describe(self) -> str:
        """One line for logs, the CLI and reports."""
        if self.labels is not None:
            shown = ", ".join(self.labels[:12]) + (", ..." if len(self.labels) > 12 else "")
            return f"{self.kind}: {len(self.labels)} labels ({shown})"
        assert self.names is not None and self.low is not None and self.high is not None
        ranges = "; ".join(f"{n} in [{lo:.4g}, {hi:.4g}]" for n, lo, hi in zip(self.names, self.low,
                                                                                 self.high, strict=True))
        return f"{self.kind}: continuous, trained on {ranges}"

    # -- saving -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.labels is not None:
            out["labels"] = list(self.labels)
        else:
            out.update(names=self.names, low=self.low, high=self.high, mean=self.mean, std=self.std,
                       embed=list(self.embed))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Condition:
        """Inverse of ``to_dict``; checks the fields so a damaged file is named, not half-used."""
        try:
            kind = parse_kind(str(data["kind"]))[0]
            if "labels" in data:
                labels = [str(v) for v in data["labels"]]
                if not labels:
                    raise InputError("empty label list")
                return cls(kind=kind, labels=labels)
            names = [str(v) for v in data["names"]]
            stats = {k: [float(v) for v in data[k]] for k in ("low", "high", "mean", "std")}
            if not names or any(len(v) != len(names) for v in stats.values()):
                raise InputError("names / low / high / mean / std have different lengths")
            return cls(kind=kind, names=names, embed=[int(v) for v in data.get("embed", [])], low=stats["low"],
                       high=stats["high"], mean=stats["mean"], std=stats["std"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConditionError(f"not a valid condition record ({err!r}): {data!r}") from None

    # -- from data ----------------------------------------------------------------------

    def values(self, data: Dataset) -> Tensor:
        """The raw condition of every point of ``data``: labels (N,) int64, or values (N, C).

        Label values are checked against the saved label list (same names, same order), so
        a test split or a new file cannot silently shift what label k means.
        """
        if self.labels is not None:
            if data.labels is None:
                raise ConditionError(f"{data.name}: has no labels, but this run is conditioned on labels")
            if data.label_names is not None and list(data.label_names) != self.labels:
                raise ConditionError(
                    f"{data.name}: its labels {data.label_names} differ from the run's {self.labels}; "
                    "condition on data with the same label set"
                )
            return data.labels.long()
        return _continuous_values(self.kind, data)

    def tensor(self, data: Dataset) -> Tensor:
        """c for every point of ``data``: (N, width) float32, ready for ``model.encode(x, c)``."""
        return self.encode(self.values(data))

    def true_log_prob(self, data: Dataset) -> tuple[Tensor | None, str | None]:
        """The exact log p(x|c) of every point of ``data`` (N,), where the data knows it,
        and otherwise None with the reason (None as well when nothing is known to compare).

        Labels of the toy Gaussian mixtures are their components, so log p(x | label = k) is
        the density of component k (``data.log_prob_given_label``). Given its radius r a 2D
        point lies on the circle ‖x‖ = r: that conditional has no density in the plane (it
        is a density along the circle), so no true −log p(x|r) exists for a gap.
        """
        if self.labels is not None:
            if data.log_prob_given_label is None:
                return None, None
            return data.log_prob_given_label(data.x, self.values(data)), None
        if self.kind == "radius" and data.log_prob is not None:
            return None, ("no gap for a radius condition: given its radius a point lies on a circle, where the "
                          "true p(x|r) has no density in the plane, so −log p(x|r) cannot be compared; the "
                          "unconditional −log p(x) would measure a different quantity")
        return None, None

    # -- encoding -----------------------------------------------------------------------

    def encode(self, raw: Tensor) -> Tensor:
        """Raw conditions -> c: labels (N,) -> one-hot (N, K); values (N, C) -> standardised (N, C)."""
        if self.labels is not None:
            if raw.dtype.is_floating_point or raw.dtype == torch.bool or raw.ndim != 1:
                raise ConditionError(
                    f"label conditions must be integer label indices of shape (N,), got {raw.dtype} "
                    f"{tuple(raw.shape)}"
                )
            k = len(self.labels)
            if raw.numel() and (int(raw.min()) < 0 or int(raw.max()) >= k):
                bad = int(raw[(raw < 0) | (raw >= k)][0])
                raise ConditionError(f"unknown label index {bad}; this run knows labels 0 to {k - 1}: "
                                     f"{', '.join(self.labels)}")
            return torch.nn.functional.one_hot(raw, k).float()
        assert self.mean is not None and self.std is not None
        c = self._check_width(raw.float())
        mean = torch.tensor(self.mean, dtype=c.dtype, device=c.device)
        std = torch.tensor(self.std, dtype=c.dtype, device=c.device)
        return (c - mean) / std

    def _check_width(self, raw: Tensor) -> Tensor:
        width = self.width
        if raw.ndim == 1 and width == 1:
            raw = raw[:, None]
        if raw.ndim != 2 or raw.shape[1] != width:
            raise ConditionError(
                f"this run's condition {self.kind} has {width} value(s) per point "
                f"({', '.join(self.names or [])}), got shape {tuple(raw.shape)}"
            )
        if not bool(torch.isfinite(raw).all()):
            raise ConditionError("condition values must be finite numbers (got NaN or infinity)")
        return raw

    # -- from what a user types -----------------------------------------------------------

    def parse(self, values: Sequence[str | int | float]) -> Tensor:
        """User values -> raw conditions (labels (N,) or values (N, C)), checked.

        Labels may be given by name (``"mode 3"``, ``"7"``) or by index (``3``); names win
        when both could match. Continuous values are numbers, ``"a,b"`` for a vector.
        Values far outside the training range draw a ``ConditionRangeWarning``.
        """
        if len(values) == 0:
            raise ConditionError("no condition values given")
        if self.labels is not None:
            return torch.tensor([self._label_index(v) for v in values], dtype=torch.int64)
        rows = [self._numbers(v) for v in values]
        bad = next((i for i, row in enumerate(rows) if len(row) != self.width), None)
        if bad is not None:
            raise ConditionError(
                f"condition {values[bad]!r} has {len(rows[bad])} value(s); this run's condition {self.kind} "
                f"has {self.width} per point ({', '.join(self.names or [])})"
            )
        raw = self._check_width(torch.tensor(rows, dtype=torch.float32))
        self.warn_out_of_range(raw)
        return raw

    def _label_index(self, value: str | int | float) -> int:
        assert self.labels is not None
        text = str(value).strip()
        if text in self.labels:
            return self.labels.index(text)
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if number.is_integer() and 0 <= number < len(self.labels):
            return int(number)
        raise ConditionError(
            f"unknown label {text!r}; this run was trained on {len(self.labels)} labels: "
            + ", ".join(f"{i} ({name})" if name != str(i) else name for i, name in enumerate(self.labels))
            + " (give a label name or its index)"
        )

    def _numbers(self, value: str | int | float) -> list[float]:
        if isinstance(value, int | float):
            return [float(value)]
        try:
            return [float(v) for v in str(value).replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ConditionError(
                f"condition {value!r} is not a number; this run's condition {self.kind} is continuous "
                f"({self.width} value(s) per point, e.g. --condition {_format(self.mean or [])!s})"
            ) from None

    def out_of_range(self, raw: Tensor) -> Tensor:
        """Which rows of raw values (N, C) lie far outside the training range: (N,) bool."""
        assert self.low is not None and self.high is not None
        low = torch.tensor(self.low, dtype=raw.dtype, device=raw.device)
        high = torch.tensor(self.high, dtype=raw.dtype, device=raw.device)
        margin = RANGE_MARGIN * (high - low).clamp_min(1e-12)
        return ((raw < low - margin) | (raw > high + margin)).any(dim=1)

    def warn_out_of_range(self, raw: Tensor) -> None:
        """Warn (``ConditionRangeWarning``) when values lie far outside the training range."""
        far = self.out_of_range(self._check_width(raw))
        if bool(far.any()):
            first = raw[far][0].tolist()
            ranges = "; ".join(f"{n} in [{lo:.4g}, {hi:.4g}]" for n, lo, hi in zip(
                self.names or [], self.low or [], self.high or [], strict=True))
            warnings.warn(
                f"{int(far.sum())} of {len(raw)} condition value(s) (first: {_format(first)}) lie far "
                f"outside the training range ({ranges}); the model extrapolates there and samples "
                "may not follow the condition",
                ConditionRangeWarning, stacklevel=3,
            )

    def from_arg(self, text: str) -> Tensor:
        """A CLI ``--condition`` argument -> raw conditions: a file of conditions (one per
        line / row) if ``text`` names an existing file, otherwise a single value (a name
        with a data-file suffix that does not exist is reported as a missing file)."""
        path = Path(text)
        if path.is_file():
            return read_condition_file(path, self)
        # A "/" alone does not make a file name: labels such as Fashion-MNIST's "T-shirt/top" hold one.
        if path.suffix.lower() in (".csv", ".txt", ".npy"):
            raise ConditionError(f"{text}: no such file of conditions (and not a condition value)")
        return self.parse([text])

    def grid(self, n: int) -> Tensor:
        """n continuous values evenly spread over the training range: (n, C) (for figures)."""
        if self.labels is not None:
            raise ConditionError("a grid of values needs a continuous condition")
        low = torch.tensor(self.low, dtype=torch.float32)
        high = torch.tensor(self.high, dtype=torch.float32)
        t = torch.linspace(0, 1, n)[:, None]
        return low + t * (high - low)


def _continuous_values(kind: str, data: Dataset) -> Tensor:
    """Raw continuous condition (N, C) of a dataset for a ``radius`` or ``column:`` kind."""
    if kind == "radius":
        if "radius" not in data.extras:
            raise ConditionError(
                f"{data.name}: has no radius (it is given for 2D toy data and user point files); "
                "use --condition label or column:NAME instead"
            )
        if data.image_shape is not None:
            raise ConditionError(f"{data.name}: radius conditions are for points, not images; use label")
        return data.extras["radius"].float().reshape(-1, 1)
    names = parse_kind(kind)[1]
    missing = [n for n in names if f"column:{n}" not in data.extras]
    if missing:
        raise ConditionError(
            f"{data.name}: no condition column(s) {', '.join(missing)}; column conditions need a CSV "
            "file with a header row naming them (--data file.csv --condition column:NAME)"
        )
    return torch.stack([data.extras[f"column:{n}"].float() for n in names], dim=1)


class FewRowsPerLabelWarning(VaelabWarning):
    """A label condition whose labels have almost no training rows each (an identifier column?)."""


def _warn_few_rows_per_label(data: Dataset, names: Sequence[str]) -> None:
    """Warn when the training split has fewer than two rows per label on average, or labels with
    no training row at all: a label column with one value per row (an identifier) trains a model
    whose conditioning cannot be learned or measured (audit UF49)."""
    assert data.labels is not None
    counts = torch.bincount(data.labels.cpu().long(), minlength=len(names))
    unseen = int((counts == 0).sum())
    seen = len(names) - unseen
    if seen * 2 <= len(data) and not unseen:
        return
    missing = f"; {unseen} of the {len(names)} labels have no training row at all" if unseen else ""
    warnings.warn(f"{data.name}: {seen} distinct labels in {len(data)} training rows{missing}: a label condition "
                  "needs several rows of each label to learn from, and its conditioning accuracy then says little; "
                  "is the label column an identifier? Condition on a column with few classes, or drop --condition",
                  FewRowsPerLabelWarning, stacklevel=3)


def fit_condition(kind: str, data: Dataset, embed: Sequence[int] = (16, 16)) -> Condition:
    """The condition spec of a run, from its training split.

    Discrete: the label list (``data.label_names``, or ``"0".."K-1"``). Continuous: names,
    range, mean and standard deviation of the training values, and the embedding widths.
    """
    kind = parse_kind(kind)[0]
    if kind == "label":
        if data.labels is None:
            raise ConditionError(
                f"{data.name}: has no labels to condition on; for a CSV name a label column "
                "(--label-column NAME), for .npz store an array 'labels', or use a continuous condition"
            )
        names = list(data.label_names) if data.label_names is not None else [
            str(i) for i in range(data.num_classes)]
        if len(names) < 2:
            raise ConditionError(f"{data.name}: has a single label ({names}); conditioning on it says nothing")
        _warn_few_rows_per_label(data, names)
        return Condition(kind=kind, labels=names)
    values = _continuous_values(kind, data).double()  # (N, C)
    std = values.std(dim=0) if len(values) > 1 else torch.zeros(values.shape[1], dtype=torch.float64)
    # A constant column carries nothing; dividing by 1 instead of 0 keeps c finite.
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    names = ["radius"] if kind == "radius" else parse_kind(kind)[1]
    return Condition(kind=kind, names=names, low=values.min(0).values.tolist(),
                     high=values.max(0).values.tolist(), mean=values.mean(0).tolist(), std=std.tolist(),
                     embed=[int(w) for w in embed])


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
