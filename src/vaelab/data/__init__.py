"""Datasets: 2D toy distributions, MNIST-family images and user files, all as (N, D) tensors."""

from vaelab.data.dataset import Dataset

__all__ = ["Dataset"]
