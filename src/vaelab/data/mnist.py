"""The MNIST family (MNIST, Fashion-MNIST, KMNIST): files, mirrors, checksums, class names, loader.

Every loader of image data returns a :class:`~vaelab.data.dataset.Dataset` whose ``x`` is float32
(N, D) in [0, 1] with ``image_shape = (C, H, W)`` and D = C * H * W. Binarization, when wanted, is
the trainer's job: the loaders return grey levels.

Each dataset comes as four IDX files, looked for, file by file, in this order:

1. the user's data folder ``<root>/<name>/`` (see :mod:`vaelab.data.download` for the root); files
   there are used as they are, gzipped or not;
2. read-only system folders (:func:`system_data_dirs`): ``/usr/local/share/datasets/<name>/``,
   ``/usr/share/datasets/<name>/`` (where Debian's ``dataset-fashion-mnist`` package puts the
   official Fashion-MNIST files), then ``<dir>/datasets/<name>/`` for each ``$XDG_DATA_DIRS``
   entry. Only the published ``.gz`` files are taken from there, and only when their MD5 is the
   published one, exactly as a download is checked. vaelab never writes into a system folder;
   anything it derives (the feature classifier of :mod:`vaelab.quality`) goes in the user's folder;
3. a checked download into the user's folder (:mod:`vaelab.data.download`).

The table of datasets and the lookup of their files import nothing heavy (``vaelab datasets``
says where each dataset is without torch); the loader imports torch when it is called.
scikit-learn's digits are in :mod:`vaelab.data.digits`, image folders in :mod:`vaelab.data.folders`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

from vaelab.data.download import (
    CHUNK_BYTES,
    DATA_DIR_ENV,
    ChecksumError,
    DatasetNotFoundError,
    IdxResource,
    ProgressFn,
    _download,
    dataset_folder,
)
from vaelab.errors import InputError

if TYPE_CHECKING:  # torch is imported by the loader alone: the table and the lookup need none
    from vaelab.data.dataset import Dataset

__all__ = [
    "MNIST_FAMILY",
    "SYSTEM_DATA_DIRS_ENV",
    "DatasetLocation",
    "IdxResource",
    "MnistFamilySpec",
    "load_mnist_family",
    "locate_dataset",
    "system_data_dirs",
]

logger = logging.getLogger(__name__)


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
        system_package: the Debian package that installs the official files in
            ``/usr/share/datasets/<name>/``, where there is one.
        content_md5s: (file name without ``.gz``, MD5 of the un-gzipped bytes) per file, where
            known: a repackaged copy (Debian's is gzipped anew, so its ``.gz`` MD5 differs) is
            checked by its content.
    """

    name: str
    title: str
    base_urls: tuple[str, ...]
    train_images: IdxResource
    train_labels: IdxResource
    test_images: IdxResource
    test_labels: IdxResource
    label_names: tuple[str, ...]
    system_package: str | None = None
    content_md5s: tuple[tuple[str, str], ...] = ()

    def content_md5(self, resource: IdxResource) -> str | None:
        """The MD5 of ``resource``'s un-gzipped bytes, where known."""
        return dict(self.content_md5s).get(resource.filename.removesuffix(".gz"))

    def files(self, split: Split) -> tuple[IdxResource, IdxResource]:
        """(images, labels) of one split."""
        if split == "train":
            return self.train_images, self.train_labels
        return self.test_images, self.test_labels


class _IdxFiles(TypedDict):
    """The four files of a dataset, as keyword arguments of :class:`MnistFamilySpec`."""

    train_images: IdxResource
    train_labels: IdxResource
    test_images: IdxResource
    test_labels: IdxResource


def _idx_files(md5s: tuple[str, str, str, str]) -> _IdxFiles:
    """The four standard file names, which all three datasets share, with their MD5s."""
    train_images, train_labels, test_images, test_labels = md5s
    return _IdxFiles(
        train_images=IdxResource("train-images-idx3-ubyte.gz", train_images),
        train_labels=IdxResource("train-labels-idx1-ubyte.gz", train_labels),
        test_images=IdxResource("t10k-images-idx3-ubyte.gz", test_images),
        test_labels=IdxResource("t10k-labels-idx1-ubyte.gz", test_labels),
    )


def _content_md5s(md5s: tuple[str, str, str, str]) -> tuple[tuple[str, str], ...]:
    """The un-gzipped files' MD5s, in the order of ``_idx_files``."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return tuple(zip(names, md5s, strict=True))


# The MD5s are the ones published with each dataset (and used by torchvision, tfds and others):
# MNIST from LeCun et al.'s page, Fashion-MNIST from zalandoresearch/fashion-mnist's README,
# KMNIST from rois-codh/kmnist. The MD5s of the un-gzipped files (content_md5s) are those that
# other loaders list (torchvision's raw checks, among others); they are the content of
# Debian's dataset-fashion-mnist (gzipped anew in 2020, so its .gz MD5s are not the published
# ones) and of the MNIST t10k files in this project's shared data. KMNIST's are not listed:
# only its published .gz files are taken from a system folder.
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
        content_md5s=_content_md5s(
            (
                "6bbc9ace898e44ae57da46a324031adb",
                "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea",
                "27ae3e4e09519cfbb04c329615203637",
            )
        ),
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
        system_package="dataset-fashion-mnist",
        content_md5s=_content_md5s(
            (
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a",
                "15d484375f8d13e6eb1aabb0c3f46965",
            )
        ),
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


# ---------------------------------------------------------------------------------------------
# Read-only system folders (Debian's dataset-* packages and the like)
# ---------------------------------------------------------------------------------------------

# Set, it replaces the default list of system folders: entries separated by os.pathsep (":"),
# each holding one subfolder per dataset. Set to the empty string, no system folder is looked in.
SYSTEM_DATA_DIRS_ENV = "VAELAB_SYSTEM_DATA_DIRS"
_DEFAULT_SYSTEM_DIRS = ("/usr/local/share/datasets", "/usr/share/datasets")


def system_data_dirs() -> list[Path]:
    """The read-only folders searched after the user's data folder, in order (each holds one
    subfolder per dataset; the folders need not exist).

    ``$VAELAB_SYSTEM_DATA_DIRS``, when set, is the whole list (``os.pathsep``-separated; empty:
    none). Otherwise ``/usr/local/share/datasets`` (the local administrator's copies first, as in
    the XDG default order), ``/usr/share/datasets`` (Debian's ``dataset-*`` packages), then
    ``<dir>/datasets`` for each entry of ``$XDG_DATA_DIRS`` (a Nix, Flatpak or conda prefix),
    without repeats.
    """
    env = os.environ.get(SYSTEM_DATA_DIRS_ENV)
    if env is not None:
        entries = [Path(e).expanduser() for e in env.split(os.pathsep) if e]
    else:
        xdg = os.environ.get("XDG_DATA_DIRS", "")
        entries = [Path(d) for d in _DEFAULT_SYSTEM_DIRS]
        entries += [Path(e).expanduser() / "datasets" for e in xdg.split(os.pathsep) if e]
    unique: list[Path] = []
    for entry in entries:
        if entry not in unique:
            unique.append(entry)
    return unique


def file_md5(path: Path) -> str:
    """The MD5 of a file's bytes, read in chunks (the published checksums are of the .gz files)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES * 16):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FoundFile:
    """Where one of a dataset's files was found.

    Attributes:
        resource: the published file.
        path: the file used, or None when it is nowhere on disk (a download is due).
        system: True when ``path`` is in a read-only system folder (its MD5 was checked).
        bad_copies: system copies skipped because their MD5 is not the published one.
    """

    resource: IdxResource
    path: Path | None
    system: bool = False
    bad_copies: tuple[Path, ...] = ()


def _system_copy_ok(path: Path, resource: IdxResource, content_md5: str | None) -> tuple[bool, str]:
    """Whether a system folder's copy is the published file: its ``.gz`` bytes have the
    published MD5, or (where the content's MD5 is known) its un-gzipped bytes have that one;
    with the MD5 found, for the message."""
    import gzip

    found = file_md5(path)
    if path.name == resource.filename and found == resource.md5:
        return True, found
    if content_md5 is None:
        return False, found
    if path.name == resource.filename:  # gzipped anew (another header or level): check the content
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(CHUNK_BYTES * 16):
                    digest.update(chunk)
        except (OSError, EOFError) as e:  # not gzip, or truncated
            return False, f"{found} (and it does not un-gzip: {e})"
        found = digest.hexdigest()
    return found == content_md5, found


def _find_file(
    resource: IdxResource, user_folder: Path, spec: MnistFamilySpec, system_dirs: Sequence[Path]
) -> FoundFile:
    """One file: the user's folder first (as it is), then the system folders (only a copy with
    the published MD5, as a download is checked; see ``_system_copy_ok``)."""
    local = _find_local(user_folder, resource)
    if local is not None:
        return FoundFile(resource, local)
    content_md5 = spec.content_md5(resource)
    names = [resource.filename] + ([resource.filename.removesuffix(".gz")] if content_md5 else [])
    bad: list[Path] = []
    for root in system_dirs:
        for candidate in (root / spec.name / n for n in names):
            try:
                if not candidate.is_file():
                    continue
                ok, found = _system_copy_ok(candidate, resource, content_md5)
            except OSError as e:  # unreadable (permissions): as good as absent, but said
                logger.warning("cannot read %s (%s); skipped", candidate, e)
                continue
            if ok:
                return FoundFile(resource, candidate, system=True, bad_copies=tuple(bad))
            logger.warning("%s: MD5 %s is not the published one; skipped", candidate, found)
            bad.append(candidate)
    return FoundFile(resource, None, bad_copies=tuple(bad))


@dataclass(frozen=True)
class DatasetLocation:
    """Where each file of an MNIST-family dataset is, as ``load_mnist_family`` would find it.

    Attributes:
        name: the dataset.
        user_folder: ``<root>/<name>``, looked in first, where downloads go.
        system_dirs: the system folders looked in after it (see :func:`system_data_dirs`).
        files: one entry per file asked about, in the order asked.
    """

    name: str
    user_folder: Path
    system_dirs: tuple[Path, ...]
    files: tuple[FoundFile, ...]

    @property
    def missing(self) -> list[IdxResource]:
        """The files found nowhere."""
        return [f.resource for f in self.files if f.path is None]

    def describe(self) -> str:
        """Where the dataset is, in one line for people: the user folder, a system folder, or
        not found (and how to get it)."""
        spec = MNIST_FAMILY[self.name]
        places = []
        for f in self.files:
            if f.path is not None:
                place = f"system folder {f.path.parent} (MD5 checked)" if f.system else f"user folder {f.path.parent}"
                if place not in places:
                    places.append(place)
        bad = [p for f in self.files for p in f.bad_copies]
        damaged = f"; damaged copies skipped: {', '.join(map(str, bad))}" if bad else ""
        missing = self.missing
        if not missing:
            return "found in " + " and ".join(places) + damaged
        how = f"downloaded into {self.user_folder} on first use"
        if spec.system_package is not None:
            how += f", or install Debian's {spec.system_package} (apt-get install {spec.system_package})"
        if places:
            names = ", ".join(r.filename for r in missing)
            test_only = {r.filename for r in missing} == {r.filename for r in spec.files("train")}
            enough = " (its test files are enough for image_split test-9k)" if test_only else ""
            return f"partly found in {' and '.join(places)}{enough}; missing {names}: {how}{damaged}"
        return f"not found: {how}{damaged}"


def locate_dataset(
    name: str,
    splits: Sequence[Split] = ("train", "test"),
    data_dir: str | os.PathLike[str] | None = None,
    system_dirs: Sequence[str | os.PathLike[str]] | None = None,
) -> DatasetLocation:
    """Where the files of ``splits`` of dataset ``name`` are, without reading them as images.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"kmnist"``.
        splits: the splits whose (images, labels) files to look for.
        data_dir: the user's root folder; see :func:`~vaelab.data.download.resolve_data_dir`.
        system_dirs: the read-only folders to look in after it; default :func:`system_data_dirs`.

    Returns:
        A :class:`DatasetLocation`; copies in system folders have had their MD5 checked.
    """
    spec = _lookup(name)
    folder = dataset_folder(spec.name, data_dir)
    dirs = tuple(system_data_dirs() if system_dirs is None else (Path(d) for d in system_dirs))
    for split in splits:
        if split not in ("train", "test"):
            raise InputError(f"split must be 'train' or 'test', got {split!r}")
    files = tuple(_find_file(r, folder, spec, dirs) for split in splits for r in spec.files(split))
    return DatasetLocation(spec.name, folder, dirs, files)


def _not_found_message(
    spec: MnistFamilySpec,
    split: Split,
    folder: Path,
    missing: Sequence[IdxResource],
    mirrors: Sequence[str],
    why: str,
    system_dirs: Sequence[Path] = (),
) -> str:
    """What is missing, where to put it and how to point vaelab elsewhere."""
    paths = "\n".join(f"  {folder / r.filename}" for r in missing)
    urls = "\n".join(f"  {base}" for base in mirrors)
    searched = ""
    if system_dirs:
        searched = (f" The read-only system folders {', '.join(str(d / spec.name) for d in system_dirs)} were "
                    f"looked in too (set {SYSTEM_DATA_DIRS_ENV} to change that list).")
    package = ""
    if spec.system_package is not None:
        package = (f" On Debian, `apt-get install {spec.system_package}` installs the official files in "
                   f"/usr/share/datasets/{spec.name}/, where vaelab finds them.")
    return (
        f"{spec.title} {split} split: these files are missing ({why}):\n{paths}\n"
        f"(un-gzipped copies without the .gz suffix are accepted too). Download them from one "
        f"of\n{urls}\nand place them in {folder}, or point --data-dir or the {DATA_DIR_ENV} "
        f"environment variable at a folder that holds a '{spec.name}' subfolder with them."
        f"{package}{searched}"
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
    system_dirs: Sequence[str | os.PathLike[str]] | None = None,
) -> Dataset:
    """Load MNIST, Fashion-MNIST or KMNIST as flattened grey levels in [0, 1].

    Local files in ``<root>/<name>/`` are used as they are (gzipped or not; their content is
    checked by the IDX reader, not by MD5, so copies from other sources work). A file not there
    is taken from the first read-only system folder that holds the published ``.gz`` with its
    published MD5 (``system_dirs``, see the module's docstring); nothing is written there.
    Files found nowhere are downloaded into ``<root>/<name>/`` when ``download`` is true.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"kmnist"``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: root folder; see :func:`resolve_data_dir` for the default.
        download: fetch missing files; when false, a missing file raises at once.
        progress: called as ``progress(bytes_done, bytes_total, filename)`` while downloading.
        base_urls: mirrors to use instead of the dataset's own (tests point this at a local
            server).
        system_dirs: read-only folders (each with one subfolder per dataset) to look in after
            the user's; default :func:`system_data_dirs`; ``()`` looks in none.

    Returns:
        Dataset with x (N, 784) float32 in [0, 1], labels (N,) int64, the 10 class names and
        image_shape (1, 28, 28).

    Raises:
        ValueError: unknown name or split; images and labels disagree.
        DatasetNotFoundError: files missing and not downloadable (the message lists the exact
            paths to fill).
        ChecksumError: files were downloaded but no mirror served the expected bytes; or a
            file is only in system folders, with another MD5 than the published one.
        IdxError: a local file is truncated or corrupt.
    """
    import torch

    from vaelab.data.dataset import Dataset
    from vaelab.data.idx import read_idx

    spec = _lookup(name)
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    location = locate_dataset(spec.name, (split,), data_dir, system_dirs)
    folder = location.user_folder
    mirrors = tuple(spec.base_urls if base_urls is None else base_urls)

    resources = spec.files(split)
    paths: dict[str, Path] = {f.resource.filename: f.path for f in location.files if f.path is not None}
    missing = location.missing
    damaged = [f for f in location.files if f.path is None and f.bad_copies]
    if damaged:
        # A system copy that is not the published file (a damaged package, a partial copy):
        # refused like a bad download, rather than replaced by a download the user did not expect.
        copies = "\n".join(f"  {p}" for f in damaged for p in f.bad_copies)
        fix = (f"reinstall it (apt-get install --reinstall {spec.system_package})"
               if spec.system_package is not None else "replace or remove it")
        raise ChecksumError(
            f"{spec.title} {split} split: these copies in read-only system folders are not the published files "
            f"(MD5 of {', '.join(f'{f.resource.filename}: {f.resource.md5}' for f in damaged)}, or of their "
            f"un-gzipped content where it is known):\n{copies}\n"
            f"They are damaged or another version: {fix}, or place good copies in {folder}, which is looked "
            f"in first (vaelab never writes into a system folder)."
        )

    if missing and not download:
        raise DatasetNotFoundError(
            _not_found_message(
                spec, split, folder, missing, mirrors, "download=False, none was fetched",
                location.system_dirs,
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
                    spec, split, folder, missing[i:], mirrors, "checksum mismatch", location.system_dirs
                )
                raise ChecksumError(f"{bad_checksums[0]}\nMirrors tried:\n{tried}\n{hint}")
            # Stop at the first file that no mirror serves: without a network every further
            # attempt would fail the same way, after its own timeout.
            hint = _not_found_message(
                spec, split, folder, missing[i:], mirrors, "download failed", location.system_dirs
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

