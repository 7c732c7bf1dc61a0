"""The MNIST family (MNIST, Fashion-MNIST, KMNIST): files, mirrors, checksums, class names, loader.

Every loader of image data returns a :class:`~vaelab.data.dataset.Dataset` whose ``x`` is float32
(N, D) in [0, 1] with ``image_shape = (C, H, W)`` and D = C * H * W. Binarization, when wanted, is
the trainer's job: the loaders return grey levels.

Each dataset comes as four IDX files, looked for in ``<root>/<name>/`` (see
:mod:`vaelab.data.download` for the root and the checked download of missing files).
scikit-learn's digits are in :mod:`vaelab.data.digits`, image folders in :mod:`vaelab.data.folders`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from vaelab.data.dataset import Dataset
from vaelab.data.download import (
    DATA_DIR_ENV,
    ChecksumError,
    DatasetNotFoundError,
    IdxResource,
    ProgressFn,
    _download,
    dataset_folder,
)
from vaelab.data.idx import read_idx
from vaelab.errors import InputError

__all__ = [
    "MNIST_FAMILY",
    "IdxResource",
    "MnistFamilySpec",
    "load_mnist_family",
]


Split = Literal["train", "test"]


# ---------------------------------------------------------------------------------------------
# MNIST family: files, mirrors, checksums, class names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MnistFamilySpec:
    """Where a 28x28 MNIST-like dataset is published and what its labels mean.

    Attributes:
        name: folder name and registry name (``"mnist"``).
        title: name for people (``"MNIST"``).
        base_urls: mirrors, tried in order; each ends with ``/`` and the file name is appended.
        train_images, train_labels, test_images, test_labels: the four files.
        label_names: class name per label value.
    """

    name: str
    title: str
    base_urls: tuple[str, ...]
    train_images: IdxResource
    train_labels: IdxResource
    test_images: IdxResource
    test_labels: IdxResource
    label_names: tuple[str, ...]

    def files(self, split: Split) -> tuple[IdxResource, IdxResource]:
        """(images, labels) of one split."""
        if split == "train":
            return self.train_images, self.train_labels
        return self.test_images, self.test_labels


def _idx_files(md5s: tuple[str, str, str, str]) -> dict[str, IdxResource]:
    """The four standard file names, which all three datasets share, with their MD5s."""
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    return {k: IdxResource(n, m) for k, n, m in zip(keys, names, md5s, strict=True)}


# The MD5s are the ones published with each dataset (and used by torchvision, tfds and others):
# MNIST from LeCun et al.'s page, Fashion-MNIST from zalandoresearch/fashion-mnist's README,
# KMNIST from rois-codh/kmnist.
MNIST_FAMILY: dict[str, MnistFamilySpec] = {
    "mnist": MnistFamilySpec(
        name="mnist",
        title="MNIST",
        base_urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        **_idx_files(
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            )
        ),
        label_names=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": MnistFamilySpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        base_urls=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        **_idx_files(
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            )
        ),
        label_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),  # fmt: skip
    ),
    "kmnist": MnistFamilySpec(
        name="kmnist",
        title="KMNIST (Kuzushiji-MNIST)",
        base_urls=(
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        ),
        **_idx_files(
            (
                "bdb82020997e1d708af4cf47b453dcf7",
                "e144d726b3acfaa3e44228e80efcd344",
                "5c965bf0a639b31b8f53240b1b52f4d7",
                "7320c461ea6c1c855c0b718fb2a4b134",
            )
        ),
        # Romanized hiragana, in label order (kmnist_classmap.csv).
        label_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}


def _find_local(folder: Path, resource: IdxResource) -> Path | None:
    """The file as published (``.gz``) or un-gzipped, whichever is there (``.gz`` first)."""
    for candidate in (folder / resource.filename, folder / resource.filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _not_found_message(
    spec: MnistFamilySpec,
    split: Split,
    folder: Path,
    missing: Sequence[IdxResource],
    mirrors: Sequence[str],
    why: str,
) -> str:
    """What is missing, where to put it and how to point vaelab elsewhere."""
    paths = "\n".join(f"  {folder / r.filename}" for r in missing)
    urls = "\n".join(f"  {base}" for base in mirrors)
    return (
        f"{spec.title} {split} split: these files are missing ({why}):\n{paths}\n"
        f"(un-gzipped copies without the .gz suffix are accepted too). Download them from one "
        f"of\n{urls}\nand place them in {folder}, or point --data-dir or the {DATA_DIR_ENV} "
        f"environment variable at a folder that holds a '{spec.name}' subfolder with them."
    )


def _lookup(name: str) -> MnistFamilySpec:
    key = name.lower().replace("_", "-")
    if key == "fashion":
        key = "fashion-mnist"
    if key not in MNIST_FAMILY:
        raise InputError(
            f"unknown MNIST-family dataset {name!r}; expected one of {list(MNIST_FAMILY)}"
        )
    return MNIST_FAMILY[key]


def load_mnist_family(
    name: str,
    split: Split = "train",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: ProgressFn | None = None,
    base_urls: Sequence[str] | None = None,
) -> Dataset:
    """Load MNIST, Fashion-MNIST or KMNIST as flattened grey levels in [0, 1].

    Local files in ``<root>/<name>/`` are used as they are (gzipped or not; their content is
    checked by the IDX reader, not by MD5, so copies from other sources work). Missing files are
    downloaded when ``download`` is true.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"kmnist"``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: root folder; see :func:`resolve_data_dir` for the default.
        download: fetch missing files; when false, a missing file raises at once.
        progress: called as ``progress(bytes_done, bytes_total, filename)`` while downloading.
        base_urls: mirrors to use instead of the dataset's own (tests point this at a local
            server).

    Returns:
        Dataset with x (N, 784) float32 in [0, 1], labels (N,) int64, the 10 class names and
        image_shape (1, 28, 28).

    Raises:
        ValueError: unknown name or split; images and labels disagree.
        DatasetNotFoundError: files missing and not downloadable (the message lists the exact
            paths to fill).
        ChecksumError: files were downloaded but no mirror served the expected bytes.
        IdxError: a local file is truncated or corrupt.
    """
    spec = _lookup(name)
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    folder = dataset_folder(spec.name, data_dir)
    mirrors = tuple(spec.base_urls if base_urls is None else base_urls)

    resources = spec.files(split)
    paths: dict[str, Path] = {}
    missing = []
    for resource in resources:
        local = _find_local(folder, resource)
        if local is None:
            missing.append(resource)
        else:
            paths[resource.filename] = local

    if missing and not download:
        raise DatasetNotFoundError(
            _not_found_message(
                spec, split, folder, missing, mirrors, "download=False, none was fetched"
            )
        )
    if missing:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(
                f"cannot create data folder {folder} ({e}); choose a writable folder with "
                f"--data-dir or {DATA_DIR_ENV}"
            ) from e
        for i, resource in enumerate(missing):
            got, failures, bad_checksums = _download(resource, folder, mirrors, progress)
            if got is not None:
                paths[resource.filename] = got
                continue
            tried = "\n".join(f"  {f}" for f in failures) or "  (no mirrors given)"
            if bad_checksums:
                # The network worked but served the wrong bytes: say so, it is not a
                # connectivity problem the user can fix by retrying later.
                hint = _not_found_message(
                    spec, split, folder, missing[i:], mirrors, "checksum mismatch"
                )
                raise ChecksumError(f"{bad_checksums[0]}\nMirrors tried:\n{tried}\n{hint}")
            # Stop at the first file that no mirror serves: without a network every further
            # attempt would fail the same way, after its own timeout.
            hint = _not_found_message(
                spec, split, folder, missing[i:], mirrors, "download failed"
            )
            raise DatasetNotFoundError(f"{hint}\nMirrors tried:\n{tried}")

    images_res, labels_res = resources
    images_path, labels_path = paths[images_res.filename], paths[labels_res.filename]
    images = read_idx(images_path)  # (N, 28, 28) uint8
    labels = read_idx(labels_path)  # (N,) uint8
    if images.dtype != torch.uint8 or images.shape[1:] != (28, 28):
        raise InputError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), found "
            f"{images.dtype} {tuple(images.shape)}; is this the right file?"
        )
    if labels.ndim != 1:
        raise InputError(
            f"{labels_path}: expected labels of shape (N,), found {tuple(labels.shape)}; "
            f"is this the right file?"
        )
    if labels.shape[0] != images.shape[0]:
        raise InputError(
            f"{spec.title} {split}: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels; one of them is from another "
            f"dataset or split: replace it"
        )
    labels = labels.to(torch.int64)
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(spec.label_names):
        raise InputError(
            f"{labels_path}: labels range from {int(labels.min())} to {int(labels.max())}, "
            f"expected 0 to {len(spec.label_names) - 1}; is this the right file?"
        )

    x = images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)  # (N, 784)
    return Dataset(
        name=spec.name,
        x=x,
        labels=labels,
        label_names=list(spec.label_names),
        image_shape=(1, 28, 28),
    )

