"""One place that lists every dataset: name -> how to load its train / test split.

``load_dataset(config, split)`` is the single entry point used by training, evaluation,
plots and the CLI. Toy distributions draw fresh points for each split (the test split from a
different seed, so evaluation is on held-out data); user files are split once by a seeded
permutation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vaelab.errors import InputError
from vaelab.memory import check_rows_fit

if TYPE_CHECKING:
    import torch

    from vaelab.config import DataConfig
    from vaelab.data.dataset import Dataset

# The names and descriptions here import nothing heavy (`vaelab datasets` and the CLI's help list
# them without torch); each loader imports its module when it is called.

Split = Literal["train", "test"]

# Offset between the train and test seeds of generated data: large and odd so the two
# streams never coincide for nearby user seeds.
_TEST_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: a one-line description and a loader ``(config, split) -> Dataset``."""

    name: str
    description: str
    load: Callable[[DataConfig, Split], Dataset]
    kind: Literal["toy2d", "image", "file"] = "toy2d"
    # Image data whose grey levels are exactly k / (levels - 1): 256 for 8-bit images; None where
    # they are not on such a grid (resized, or scikit-learn's 17 levels) or not known in advance.
    levels: int | None = None


def _split_generator(config: DataConfig, split: Split) -> torch.Generator:
    import torch

    seed = config.seed + (_TEST_SEED_OFFSET if split == "test" else 0)
    return torch.Generator().manual_seed(seed)


def _toy(fn_name: str) -> Callable[[DataConfig, Split], Dataset]:
    """The loader of the toy distribution ``vaelab.data.toy2d.<fn_name>``."""

    def load(config: DataConfig, split: Split) -> Dataset:
        from vaelab.data import toy2d

        fn = getattr(toy2d, fn_name)
        n = config.n_train if split == "train" else config.n_test
        flag = "--n-train" if split == "train" else "--n-test"
        check_rows_fit(n, 2, f"{flag} {n} (points of 2 coordinates)", f"use a smaller {flag}")
        return fn(n, generator=_split_generator(config, split))

    return load


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> None:
    """Add a dataset to the registry (names are unique)."""
    if spec.name in DATASETS:
        raise InputError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec


for _spec in (
    DatasetSpec("moons", "two interleaving half circles (sklearn, noise 0.05); 2 labels", _toy("moons")),
    DatasetSpec("circles", "two concentric circles (sklearn, noise 0.05, factor 0.5); 2 labels", _toy("circles")),
    DatasetSpec("2gmm", "two anisotropic Gaussians, weights 1/3 and 2/3; exact log p(x); 2 labels",
                _toy("two_gmm")),
    DatasetSpec("radial_gmm", "8 Gaussians on a radius-3 circle, elongated radially; exact log p(x); 8 labels",
                _toy("radial_gmm")),
    DatasetSpec("ring", "8 isotropic Gaussians (std 0.15) on a radius-2 circle; exact log p(x); 8 labels",
                _toy("ring")),
    DatasetSpec("pinwheel", "5 curved arms (swirled Gaussians); exact log p(x); 5 labels", _toy("pinwheel")),
    DatasetSpec("banana", "one bent Gaussian ridge x2 = y2 + 0.5 (y1² - 1.44); exact log p(x); 2 labels (halves)",
                _toy("banana")),
    DatasetSpec("spiral", "10 Gaussians (std 0.1) along a spiral arm; exact log p(x); 10 labels",
                _toy("spiral")),
):
    register(_spec)


# Images of the "test-9k" split: the official test files hold 10,000 images; the first 9,000
# train and the last 1,000 test. It needs only the t10k files, which are small enough to ship.
TEST_9K_TRAIN = 9000


def take(data: Dataset, idx: torch.Tensor | slice) -> Dataset:
    """The rows ``idx`` of a dataset, with its labels and extras."""
    return data.rows(idx)


def _mnist_family(name: str) -> Callable[[DataConfig, Split], Dataset]:
    def load(config: DataConfig, split: Split) -> Dataset:
        from vaelab.data import mnist

        if config.image_split == "test-9k":
            full = mnist.load_mnist_family(name, "test", data_dir=config.data_dir)
            rows = slice(0, TEST_9K_TRAIN) if split == "train" else slice(TEST_9K_TRAIN, None)
            return take(full, rows)
        return mnist.load_mnist_family(name, split, data_dir=config.data_dir)

    return load


def _digits(size: int) -> Callable[[DataConfig, Split], Dataset]:
    def load(config: DataConfig, split: Split) -> Dataset:
        from vaelab.data import digits

        return digits.load_digits(
            split, size=size, test_fraction=config.test_fraction, seed=config.seed
        )

    return load


for _spec in (
    DatasetSpec("mnist", "MNIST handwritten digits, 28x28 grey (60,000 / 10,000); downloaded once",
                _mnist_family("mnist"), kind="image", levels=256),
    DatasetSpec("fashion-mnist", "Fashion-MNIST clothing, 28x28 grey (60,000 / 10,000); downloaded, or from "
                "Debian's dataset-fashion-mnist",
                _mnist_family("fashion-mnist"), kind="image", levels=256),
    DatasetSpec("kmnist", "Kuzushiji-MNIST cursive Japanese, 28x28 grey (60,000 / 10,000); downloaded",
                _mnist_family("kmnist"), kind="image", levels=256),
    DatasetSpec("digits", "scikit-learn's 1,797 8x8 digits upsampled to 28x28 (offline); 10 labels",
                _digits(28), kind="image"),
    DatasetSpec("digits8", "scikit-learn's 1,797 digits at their native 8x8 (offline); 10 labels",
                _digits(8), kind="image"),
):
    register(_spec)


def is_image_config(config: DataConfig) -> bool:
    """True when ``config`` names image data (a registered image dataset or a folder of images)."""
    if config.path is not None:
        return Path(config.path).expanduser().is_dir()
    spec = DATASETS.get(config.name)
    return spec is not None and spec.kind == "image"


def grey_levels(config: DataConfig) -> int | None:
    """The number of grey levels of a registered image dataset whose pixels are exactly k / (levels − 1)
    (256 for MNIST and its kin), known without reading it; None for every other source."""
    spec = DATASETS.get(config.name) if config.path is None else None
    return None if spec is None else spec.levels


def known_dim(config: DataConfig) -> int | None:
    """The width D of the data's points where it is known before any of it is read: a folder of
    images becomes 1 × image_size × image_size grey pixels, whatever its files hold (None for
    every other source, whose width is read from the data). Lets a run check a huge
    --image-size against memory before reading thousands of images (audit IF15)."""
    if config.path is not None and Path(config.path).expanduser().is_dir():
        return config.image_size * config.image_size  # grey: load_image_folder's default
    return None


def dataset_names() -> list[str]:
    """Every registered dataset name, in registration order."""
    return list(DATASETS)


def _split_file(config: DataConfig, split: Split) -> Dataset:
    import torch

    from vaelab.data import folders
    from vaelab.data.files import DataFileError, load_points

    assert config.path is not None
    path = Path(config.path).expanduser()
    if not path.is_absolute() and not path.exists():
        # vaelab stores data paths absolute; a relative one comes from a hand-written config or
        # a run of vaelab 0.1.0, which stored --data as typed.
        raise DataFileError(
            f"{config.path}: no such file in the current folder {Path.cwd()}; the path is relative (a run of "
            "vaelab 0.1.0 stored --data as typed), so run the command from the folder the run was trained in"
        )
    if path.is_dir():
        full = folders.load_image_folder(config.path, size=config.image_size)
    else:
        full = load_points(config.path, label_column=config.label_column,
                           condition_columns=config.condition_columns)
    n = len(full)
    n_test = int(round(n * config.test_fraction))
    if n_test < 1 or n - n_test < 1:
        raise InputError(
            f"{config.path}: {n} points cannot be split with test_fraction={config.test_fraction}; "
            "need at least one training and one test point (use more points or change test_fraction)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return take(full, idx)


def load_dataset(config: DataConfig, split: Split = "train", *, expect_dim: int | None = None) -> Dataset:
    """Load the ``split`` of the dataset described by ``config``.

    A config with ``path`` set reads that user file (or folder of images); otherwise ``name``
    is looked up here. ``limit_train`` / ``limit_test`` keep the first N points of the split.
    ``expect_dim`` (a trained model's data dimension) refuses data whose width differs, naming
    the file: a user file may have changed since the run was trained.
    """
    from vaelab.config import lookup

    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    if config.path is not None:
        data = _split_file(config, split)
    else:
        data = lookup(DATASETS, config.name, "data.name", "dataset").load(config, split)
    if expect_dim is not None and data.dim != expect_dim:
        raise InputError(
            f"{config.path or config.name}: the data now have {data.dim} columns, but the run was trained on "
            f"{expect_dim}; the file changed since training: restore it, or train a new run on it"
        )
    limit = config.limit_train if split == "train" else config.limit_test
    return data if limit is None or limit >= len(data) else take(data, slice(0, limit))
