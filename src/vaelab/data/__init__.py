"""Datasets: 2D toy distributions, MNIST-family images and user files, all as (N, D) tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vaelab.data.dataset import Dataset

__all__ = ["Dataset"]


def __getattr__(name: str) -> Any:
    # PEP 562: ``vaelab.data.Dataset`` imports torch on first use, so the dataset registry's names
    # (``vaelab.data.registry.DATASETS``) can be read without it.
    if name == "Dataset":
        from vaelab.data.dataset import Dataset

        return Dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
