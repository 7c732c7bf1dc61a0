"""Image datasets: the MNIST family, scikit-learn's digits and a folder of your own images.

Every loader returns a :class:`~vaelab.data.dataset.Dataset` whose ``x`` is float32 (N, D) in
[0, 1] with ``image_shape = (C, H, W)`` and D = C * H * W. Binarization, when wanted, is the
trainer's job: the loaders return grey levels.

MNIST, Fashion-MNIST and KMNIST come as four IDX files each. They are looked for in
``<root>/<name>/`` where ``<root>`` is, in order: the ``data_dir`` argument, the
``VAELAB_DATA_DIR`` environment variable, ``$XDG_CACHE_HOME/vaelab`` or ``~/.cache/vaelab``.
Missing files are downloaded from public mirrors, checked against their published MD5 and only
then moved into place, so an interrupted or bad download never leaves a file under the final
name. Nothing here prints: progress goes to an optional callback, news to :mod:`logging`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.data.dataset import Dataset
from vaelab.data.idx import read_idx
from vaelab.errors import InputError, VaelabError

__all__ = [
    "DATA_DIR_ENV",
    "IMAGE_EXTENSIONS",
    "MNIST_FAMILY",
    "ChecksumError",
    "DatasetNotFoundError",
    "IdxResource",
    "MnistFamilySpec",
    "ProgressFn",
    "dataset_folder",
    "load_digits",
    "load_image_folder",
    "load_mnist_family",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "VAELAB_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation, not for the whole file
CHUNK_BYTES = 1 << 16

Split = Literal["train", "test"]
# progress(bytes_done, bytes_total, filename); bytes_total is None when the server sends no
# Content-Length. Called once with bytes_done = 0 and then after every chunk.
ProgressFn = Callable[[int, int | None, str], None]


class DatasetNotFoundError(VaelabError, FileNotFoundError):
    """The dataset's files are not on disk and could not (or may not) be downloaded."""


class ChecksumError(InputError):
    """A downloaded file's MD5 differs from the published one."""


# ---------------------------------------------------------------------------------------------
# MNIST family: files, mirrors, checksums, class names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdxResource:
    """One published file: its name (``.gz``) and the MD5 of exactly those gzipped bytes."""

    filename: str
    md5: str


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


# ---------------------------------------------------------------------------------------------
# Where the files live
# ---------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The root folder that holds one subfolder per dataset.

    Order: ``data_dir`` if given, else ``$VAELAB_DATA_DIR``, else ``$XDG_CACHE_HOME/vaelab``,
    else ``~/.cache/vaelab``. Empty environment variables count as unset. The folder need not
    exist yet.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if env := os.environ.get(DATA_DIR_ENV):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "vaelab"
    return Path.home() / ".cache" / "vaelab"


def dataset_folder(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<name>``: the folder where dataset ``name``'s files are looked for."""
    return resolve_data_dir(data_dir) / name


def _find_local(folder: Path, resource: IdxResource) -> Path | None:
    """The file as published (``.gz``) or un-gzipped, whichever is there (``.gz`` first)."""
    for candidate in (folder / resource.filename, folder / resource.filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


class _TransferError(OSError):
    """The server stopped sending before the announced Content-Length was reached."""


def _fetch(url: str, dest: Path, md5: str, progress: ProgressFn | None) -> None:
    """Stream ``url`` into ``dest``, atomically, if and only if its MD5 is ``md5``.

    The bytes go to a temporary file beside ``dest`` (same file system, so ``os.replace`` is
    atomic) and are renamed only after the checksum matches. Concurrent downloads of the same
    file (e.g. several torchrun ranks) each use their own temporary file and so cannot clash.

    Raises:
        urllib.error.URLError, OSError: network failure (including a transfer cut short).
        ChecksumError: the bytes arrived but their MD5 is wrong.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "vaelab"})
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            request, timeout=DOWNLOAD_TIMEOUT_S
        ) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            done = 0
            if progress is not None:
                progress(0, total, dest.name)
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total, dest.name)
            # http.client's read(n) returns b"" when the connection drops early instead of
            # raising IncompleteRead, so a cut transfer has to be detected here.
            if total is not None and done < total:
                raise _TransferError(
                    f"connection closed after {done} of {total} bytes of {dest.name}"
                )
            out.flush()
            os.fsync(out.fileno())
        found = digest.hexdigest()
        if found != md5:
            raise ChecksumError(
                f"downloaded {dest.name} from {url} but its MD5 is {found}, expected {md5}; "
                f"the mirror serves a different or damaged file"
            )
        # mkstemp creates the file readable by its owner only; a data folder is often shared.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        # On success tmp was renamed away; on any failure remove the partial file.
        tmp.unlink(missing_ok=True)


def _download(
    resource: IdxResource, folder: Path, base_urls: Sequence[str], progress: ProgressFn | None
) -> tuple[Path | None, list[str], list[ChecksumError]]:
    """Try each mirror in turn; return (path or None, failure notes, checksum errors)."""
    failures: list[str] = []
    bad_checksums: list[ChecksumError] = []
    dest = folder / resource.filename
    for base in base_urls:
        url = base.rstrip("/") + "/" + resource.filename
        logger.info("downloading %s from %s", resource.filename, url)
        try:
            _fetch(url, dest, resource.md5, progress)
        except ChecksumError as e:
            logger.warning("%s", e)
            bad_checksums.append(e)
            failures.append(f"{url}: {e}")
        except (OSError, ValueError, http.client.HTTPException) as e:
            # URLError, HTTPError and timeouts are OSErrors; ValueError is a malformed URL;
            # HTTPException covers protocol errors such as a bad status line.
            # HTTPError's str has the status code; other URLErrors wrap the socket error.
            wrapped = isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
            reason = e.reason if isinstance(e, urllib.error.URLError) and wrapped else e
            # info, not warning: the next mirror may well work, and if none does the error
            # raised below lists every failure.
            logger.info("could not download %s: %s", url, reason)
            failures.append(f"{url}: {reason}")
        else:
            logger.info("saved %s (MD5 verified)", dest)
            return dest, failures, bad_checksums
    return None, failures, bad_checksums


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


# ---------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# A folder of images
# ---------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# ITU-R 601-2 luma, the weights PIL's convert("L") uses.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _is_image(path: Path) -> bool:
    # Hidden files are skipped: macOS leaves "._name.png" resource forks next to real images.
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and path.is_file()
    )


def _read_image(path: Path) -> Tensor:
    """One image as float32 (C, H, W) in [0, 1] with C = 1 (grey) or 3 (RGB)."""
    try:
        if path.suffix.lower() == ".png":
            import matplotlib.image

            # PNGs come back as floats in [0, 1], whatever their bit depth.
            array = np.asarray(matplotlib.image.imread(path), dtype=np.float32)
        else:
            try:
                from PIL import Image
            except ImportError as e:
                raise ImportError(
                    f"reading JPEG {path} needs Pillow (pip install pillow), or convert it to PNG"
                ) from e
            with Image.open(path) as opened:
                im = opened if opened.mode in ("L", "RGB") else opened.convert("RGB")  # CMYK, palette, ... JPEGs
                array = np.asarray(im, dtype=np.float32) / 255.0
    except ImportError:
        raise
    except Exception as e:  # any decoder failure means the same to the user
        raise InputError(f"cannot read image {path}: {e}") from e

    image = torch.from_numpy(np.ascontiguousarray(array))
    if image.ndim == 2:
        return image[None]  # (1, H, W)
    if image.ndim == 3 and image.shape[2] in (2, 4):
        # Composite over black: transparent pixels become background (0), as in MNIST.
        alpha = image[:, :, -1:]
        image = image[:, :, :-1] * alpha
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise InputError(f"cannot read image {path}: unexpected array shape {tuple(array.shape)}")
    return image.permute(2, 0, 1)  # (C, H, W)


def load_image_folder(
    path: str | os.PathLike[str], size: int = 28, grayscale: bool = True
) -> Dataset:
    """Load PNG / JPEG images from a folder, one class per subfolder or all unlabelled.

    Layouts:
        ``path/<class>/**/*.png``: labelled; labels index the sorted class folder names.
        ``path/*.png``: unlabelled (labels None).
    Images may have any size; each is resized (bilinear, antialiased) to size x size.

    Args:
        path: the folder.
        size: output height and width in pixels.
        grayscale: average colour to one luma channel; else keep 3 RGB channels (grey images
            are repeated).

    Returns:
        Dataset with x (N, C * size * size) float32 in [0, 1], image_shape (C, size, size) with
        C = 1 if grayscale else 3, and labels (N,) int64 + label_names when there are classes.

    Raises:
        FileNotFoundError: the folder does not exist or holds no images.
        ValueError: images both at the top level and in subfolders; an unreadable image.
    """
    root = Path(path).expanduser()
    looked_for = ", ".join(IMAGE_EXTENSIONS)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist or is not a folder; expected a folder of "
            f"{looked_for} files (or one subfolder per class)"
        )
    if size < 1:
        raise InputError(f"size must be a positive number of pixels, got {size}")

    top_level = sorted(p for p in root.iterdir() if _is_image(p))
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_files = {
        d.name: sorted(
            p
            for p in d.rglob("*")
            if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(d).parts)
        )
        for d in class_dirs
    }
    class_files = {name: files for name, files in class_files.items() if files}

    if top_level and class_files:
        raise InputError(
            f"{root} has images both at its top level ({top_level[0].name}, ...) and in "
            f"subfolders ({', '.join(class_files)}); put every image in a class subfolder for "
            f"labelled data, or all of them directly in {root} for unlabelled data"
        )
    files: list[Path]
    if class_files:
        label_names = list(class_files)  # sorted, since class_dirs is
        files = [f for name in label_names for f in class_files[name]]
        labels = torch.tensor(
            [i for i, name in enumerate(label_names) for _ in class_files[name]], dtype=torch.int64
        )
    else:
        label_names, labels, files = None, None, top_level
    if not files:
        raise FileNotFoundError(
            f"no images in {root} or its subfolders (looked for {looked_for}, any case); add "
            f"images or point to the right folder"
        )
    logger.info("loading %d images from %s", len(files), root)

    channels = 1 if grayscale else 3
    x = torch.empty(len(files), channels, size, size)  # (N, C, size, size)
    for i, file in enumerate(files):
        image = _read_image(file)  # (1 or 3, H, W)
        if grayscale and image.shape[0] == 3:
            image = torch.einsum("chw,c->hw", image, _LUMA)[None]
        elif not grayscale and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if image.shape[1:] != (size, size):
            image = F.interpolate(
                image[None], size=(size, size), mode="bilinear", align_corners=False,
                antialias=True,
            )[0]  # fmt: skip
        x[i] = image.clamp(0.0, 1.0)

    return Dataset(
        name=f"folder:{root}",
        x=x.reshape(len(files), -1),
        labels=labels,
        label_names=label_names,
        image_shape=(channels, size, size),
    )
