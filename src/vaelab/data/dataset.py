"""The one container every dataset loader returns.

All data in vaelab is a single float32 tensor ``x`` of shape (N, D): 2D points have D = 2,
28x28 images are flattened to D = 784 and carry ``image_shape = (1, 28, 28)`` so that
convolutional nets and image figures can restore the layout. Keeping one shape everywhere
lets the objectives, the training loop and evaluation treat every dataset alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from vaelab.errors import InputError


@dataclass
class Dataset:
    """Points (or flattened images) with whatever side information the source has.

    Attributes:
        name: registry name (``"moons"``, ``"mnist"``, ``"file:/path/data.csv"`` ...).
        x: (N, D) float32 data.
        labels: (N,) int64 class / mode labels, or None when the data has none.
        label_names: human-readable name per label value (index = label), or None.
        log_prob: exact log density log p(x) of the generating distribution, (M, D) -> (M,),
            for the toy distributions where it is known in closed form; None otherwise.
        log_prob_given_label: exact conditional log density log p(x | label), (M, D) and
            (M,) int64 labels -> (M,), where the labels are mixture components whose
            densities are known (the toy Gaussian mixtures); None otherwise. A model
            conditioned on the label is scored against this, not against ``log_prob``.
        image_shape: (C, H, W) when each row of ``x`` is a flattened image, else None.
        extras: further per-point tensors of shape (N, ...) (e.g. ``"radius"``).
        columns: the name of each of x's D columns (a CSV file's header), or None; figures
            label their data axes with them.
    """

    name: str
    x: Tensor
    labels: Tensor | None = None
    label_names: list[str] | None = None
    log_prob: Callable[[Tensor], Tensor] | None = None
    log_prob_given_label: Callable[[Tensor, Tensor], Tensor] | None = None
    image_shape: tuple[int, int, int] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    columns: list[str] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 2:
            raise InputError(f"Dataset {self.name!r}: x must have shape (N, D), got {tuple(self.x.shape)}")
        if self.labels is not None and self.labels.shape != (self.x.shape[0],):
            raise InputError(
                f"Dataset {self.name!r}: labels must have shape ({self.x.shape[0]},), "
                f"got {tuple(self.labels.shape)}"
            )
        for key, value in self.extras.items():
            if value.shape[0] != self.x.shape[0]:
                raise InputError(
                    f"Dataset {self.name!r}: extra {key!r} has {value.shape[0]} rows, x has {self.x.shape[0]}"
                )
        if self.columns is not None and len(self.columns) != self.x.shape[1]:
            raise InputError(f"Dataset {self.name!r}: {len(self.columns)} column names for "
                             f"{self.x.shape[1]} columns of x")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        """Number of data dimensions D."""
        return self.x.shape[1]

    @property
    def num_classes(self) -> int:
        """Number of label values (0 when unlabelled)."""
        if self.labels is None:
            return 0
        if self.label_names is not None:
            return len(self.label_names)
        return int(self.labels.max().item()) + 1

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on ``device``."""
        return replace(
            self, x=self.x.to(device), labels=None if self.labels is None else self.labels.to(device),
            extras={k: v.to(device) for k, v in self.extras.items()},
        )

    def rows(self, idx: Tensor | slice) -> Dataset:
        """The points ``idx`` (with their labels and extras); everything else is kept."""
        return replace(
            self, x=self.x[idx], labels=None if self.labels is None else self.labels[idx],
            extras={k: v[idx] for k, v in self.extras.items()},
        )
