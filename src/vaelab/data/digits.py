"""scikit-learn's 8x8 handwritten digits as an image dataset."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vaelab.data.dataset import Dataset
from vaelab.data.mnist import Split
from vaelab.errors import InputError


def load_digits(
    split: Split = "train", size: int = 28, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), no download needed.

    The grey levels 0..16 are divided by 16. The train/test split is stratified by class and
    depends only on ``seed``, so the two splits of one seed are disjoint and cover every image.

    Args:
        split: ``"train"`` or ``"test"``.
        size: 8 for the native images, or e.g. 28 to upsample (bilinear) to MNIST's size.
        test_fraction: share of images in the test split, in (0, 1).
        seed: seed of the split.

    Returns:
        Dataset with x (N, size * size) float32 in [0, 1], labels (N,) int64, label names
        "0".."9", image_shape (1, size, size) and ``extras["index"]`` (N,), the row of each
        image in ``sklearn.datasets.load_digits()``.
    """
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    if size < 1:
        raise InputError(f"size must be a positive number of pixels, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")

    digits = sk_load_digits()
    y = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y
    )
    index = np.sort(train_idx if split == "train" else test_idx)

    x = torch.from_numpy(digits.images[index].astype(np.float32) / 16.0)  # (N, 8, 8)
    if size != 8:
        # (N, 1, 8, 8) -> (N, 1, size, size); bilinear interpolation stays within [0, 1].
        x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)
        x = x.clamp_(0.0, 1.0)[:, 0]
    return Dataset(
        name="digits",
        x=x.reshape(len(index), size * size),
        labels=torch.from_numpy(y[index]),
        label_names=[str(d) for d in range(10)],
        image_shape=(1, size, size),
        extras={"index": torch.from_numpy(index.astype(np.int64))},
    )
