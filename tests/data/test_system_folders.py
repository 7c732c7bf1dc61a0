"""Datasets in read-only system folders (/usr/share/datasets/<name>/ and the like): found after the
user's folder, checked by MD5 like a download, never written to; `vaelab datasets` says where.

The fake system folders live in tmp_path and are named with VAELAB_SYSTEM_DATA_DIRS or the
``system_dirs`` argument, so no test needs root. One test reads Debian's real Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.data.download import DATA_DIR_ENV, ChecksumError, DatasetNotFoundError
from vaelab.data.idx import write_idx
from vaelab.data.mnist import (
    MNIST_FAMILY,
    SYSTEM_DATA_DIRS_ENV,
    IdxResource,
    load_mnist_family,
    locate_dataset,
    system_data_dirs,
)

N = {"train": 13, "test": 5}
DEBIAN = Path("/usr/share/datasets")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real user cache and no real system folder unless a test names one."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv(SYSTEM_DATA_DIRS_ENV, "")


def _tensors(split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + (1 if split == "test" else 0))
    images = torch.randint(0, 256, (N[split], 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (N[split],), generator=gen, dtype=torch.uint8)
    return images, labels


def _write(folder: Path, name: str = "mnist", seed: int = 0) -> None:
    """The four published file names, small, in ``folder/name``."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        images, labels = _tensors(split, seed)
        image_res, label_res = MNIST_FAMILY[name].files(split)  # type: ignore[arg-type]
        write_idx(folder / name / image_res.filename, images)
        write_idx(folder / name / label_res.filename, labels)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _expect(monkeypatch: pytest.MonkeyPatch, folder: Path, name: str = "mnist", content: bool = False) -> None:
    """Make ``name``'s spec publish the MD5s of the files in ``folder/name`` (of their .gz bytes, or
    with ``content`` of their un-gzipped bytes, the .gz MD5s staying the real ones)."""
    spec = MNIST_FAMILY[name]
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    if content:
        pairs = tuple((getattr(spec, k).filename.removesuffix(".gz"),
                       hashlib.md5(gzip.decompress((folder / name / getattr(spec, k).filename).read_bytes()))
                       .hexdigest()) for k in keys)
        patched = dataclasses.replace(spec, content_md5s=pairs)
    else:
        files = {k: IdxResource(getattr(spec, k).filename, _md5(folder / name / getattr(spec, k).filename))
                 for k in keys}
        patched = dataclasses.replace(spec, **files)
    monkeypatch.setitem(MNIST_FAMILY, name, patched)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _is(ds, split: str, seed: int = 0) -> bool:  # type: ignore[no-untyped-def]
    images, labels = _tensors(split, seed)
    return torch.equal(ds.x, images.reshape(-1, 784).float() / 255.0) and torch.equal(ds.labels, labels.long())


# --- the list of system folders ----------------------------------------------------------------


def test_default_system_folders_and_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SYSTEM_DATA_DIRS_ENV)
    monkeypatch.setenv("XDG_DATA_DIRS", os.pathsep.join(["/opt/nix/share", "/usr/share", "", "/usr/local/share/"]))
    assert system_data_dirs() == [Path("/usr/local/share/datasets"), Path("/usr/share/datasets"),
                                  Path("/opt/nix/share/datasets")]  # repeats dropped, empty entries too
    monkeypatch.delenv("XDG_DATA_DIRS")
    assert system_data_dirs() == [Path("/usr/local/share/datasets"), Path("/usr/share/datasets")]


def test_environment_variable_replaces_the_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SYSTEM_DATA_DIRS_ENV, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert system_data_dirs() == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.setenv(SYSTEM_DATA_DIRS_ENV, "")
    assert system_data_dirs() == []


# --- loading from a system folder ---------------------------------------------------------------


def test_loads_from_a_system_folder_and_writes_nothing_there(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system = tmp_path / "usr-share-datasets"
    _write(system)
    _expect(monkeypatch, system)
    before = _snapshot(system)
    user = tmp_path / "user"
    for split in ("train", "test"):
        ds = load_mnist_family("mnist", split, data_dir=user, system_dirs=[system], base_urls=[_dead_url()])
        assert _is(ds, split)
    assert _snapshot(system) == before
    assert not user.exists()  # nothing to download, so nothing was created either
    location = locate_dataset("mnist", data_dir=user, system_dirs=[system])
    assert all(f.system and f.path is not None and f.path.parent == system / "mnist" for f in location.files)
    assert location.describe() == f"found in system folder {system / 'mnist'} (MD5 checked)"


def test_the_environment_variable_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system = tmp_path / "sys"
    _write(system)
    _expect(monkeypatch, system)
    monkeypatch.setenv(SYSTEM_DATA_DIRS_ENV, str(system))
    assert _is(load_mnist_family("mnist", "test", data_dir=tmp_path / "user", download=False), "test")


def test_the_user_folder_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system, user = tmp_path / "sys", tmp_path / "user"
    _write(system, seed=0)
    _expect(monkeypatch, system)
    _write(user, seed=7)  # other images, unchecked: the user's own files are used as they are
    ds = load_mnist_family("mnist", "test", data_dir=user, system_dirs=[system], download=False)
    assert _is(ds, "test", seed=7) and not _is(ds, "test", seed=0)
    assert locate_dataset("mnist", data_dir=user, system_dirs=[system]).describe() == \
        f"found in user folder {user / 'mnist'}"


def test_each_file_is_looked_for_on_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system, user = tmp_path / "sys", tmp_path / "user"
    _write(system)
    _expect(monkeypatch, system)
    (user / "mnist").mkdir(parents=True)
    name = MNIST_FAMILY["mnist"].test_labels.filename
    (user / "mnist" / name).write_bytes((system / "mnist" / name).read_bytes())
    location = locate_dataset("mnist", ["test"], data_dir=user, system_dirs=[system])
    assert [f.system for f in location.files] == [True, False]
    assert location.describe() == f"found in system folder {system / 'mnist'} (MD5 checked) and user folder " \
                                  f"{user / 'mnist'}"


def test_a_copy_gzipped_anew_is_checked_by_its_content(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Debian's dataset-fashion-mnist holds the official bytes gzipped again (another header), so
    # the .gz MD5 differs from the published one while the un-gzipped MD5 is the published content's.
    system = tmp_path / "sys"
    _write(system)
    for p in (system / "mnist").iterdir():
        p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()), compresslevel=1, mtime=1))
    _expect(monkeypatch, system, content=True)
    assert _md5(system / "mnist" / "t10k-images-idx3-ubyte.gz") != MNIST_FAMILY["mnist"].test_images.md5
    assert _is(load_mnist_family("mnist", "test", data_dir=tmp_path / "u", system_dirs=[system], download=False),
               "test")
    # An un-gzipped copy is checked by the same content MD5.
    for p in list((system / "mnist").iterdir()):
        p.with_suffix("").write_bytes(gzip.decompress(p.read_bytes()))
        p.unlink()
    assert _is(load_mnist_family("mnist", "train", data_dir=tmp_path / "u", system_dirs=[system], download=False),
               "train")


def test_a_damaged_system_copy_is_refused_and_not_downloaded_over(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    system = tmp_path / "sys"
    _write(system)
    _expect(monkeypatch, system)
    bad = system / "mnist" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-9])  # truncated
    with pytest.raises(ChecksumError) as info:
        load_mnist_family("mnist", "test", data_dir=tmp_path / "u", system_dirs=[system], base_urls=[_dead_url()])
    message = str(info.value)
    assert str(bad) in message and "not the published files" in message
    assert str(tmp_path / "u" / "mnist") in message  # where a good copy may go instead
    assert not (tmp_path / "u").exists()
    assert "damaged copies skipped: " + str(bad) in locate_dataset(
        "mnist", data_dir=tmp_path / "u", system_dirs=[system]).describe()
    # Without the checksums patched the real MNIST MD5s apply: the fake files are not MNIST.
    monkeypatch.undo()
    monkeypatch.setenv(SYSTEM_DATA_DIRS_ENV, "")
    with pytest.raises(ChecksumError):
        load_mnist_family("mnist", "train", data_dir=tmp_path / "u", system_dirs=[system], download=False)


def test_a_later_system_folder_can_serve_a_file_a_damaged_one_lacks(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    first, second = tmp_path / "local", tmp_path / "share"
    _write(first)
    _write(second)
    _expect(monkeypatch, second)
    (first / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    location = locate_dataset("mnist", ["test"], data_dir=tmp_path / "u", system_dirs=[first, second])
    labels = location.files[1]
    assert labels.path == second / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert labels.bad_copies == (first / "mnist" / "t10k-labels-idx1-ubyte.gz",)
    assert _is(load_mnist_family("mnist", "test", data_dir=tmp_path / "u", system_dirs=[first, second],
                                 download=False), "test")


def test_not_found_names_the_system_folders_and_the_debian_package(tmp_path: Path) -> None:
    system = tmp_path / "sys"
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist_family("fashion-mnist", "test", data_dir=tmp_path / "u", system_dirs=[system], download=False)
    message = str(info.value)
    assert str(system / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message and SYSTEM_DATA_DIRS_ENV in message
    where = locate_dataset("fashion-mnist", data_dir=tmp_path / "u", system_dirs=[system]).describe()
    assert where.startswith(f"not found: downloaded into {tmp_path / 'u' / 'fashion-mnist'} on first use")
    assert "apt-get install dataset-fashion-mnist" in where


# --- vaelab datasets ----------------------------------------------------------------------------


def test_datasets_command_says_where_each_dataset_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system, user = tmp_path / "sys", tmp_path / "user"
    _write(system)
    _expect(monkeypatch, system)
    _write(user, name="kmnist")
    monkeypatch.setenv(SYSTEM_DATA_DIRS_ENV, str(system))
    result = CliRunner().invoke(app, ["datasets", "--data-dir", str(user)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    where = {lines[i].split()[0]: lines[i + 1].strip() for i in range(len(lines) - 1)
             if lines[i].split() and lines[i].split()[0] in MNIST_FAMILY}
    assert where["mnist"] == f"found in system folder {system / 'mnist'} (MD5 checked)"
    assert where["kmnist"] == f"found in user folder {user / 'kmnist'}"
    assert where["fashion-mnist"].startswith(f"not found: downloaded into {user / 'fashion-mnist'}")
    assert "apt-get install dataset-fashion-mnist" in where["fashion-mnist"]


# --- the real thing -----------------------------------------------------------------------------


@pytest.mark.skipif(not (DEBIAN / "fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (/usr/share/datasets/fashion-mnist/ is "
                           "absent): apt-get install dataset-fashion-mnist as root, as scripts/test.sh does")
def test_debian_fashion_mnist_loads_in_full(tmp_path: Path) -> None:
    user = tmp_path / "empty-user-folder"
    train = load_mnist_family("fashion-mnist", "train", data_dir=user, system_dirs=[DEBIAN], download=False)
    test = load_mnist_family("fashion-mnist", "test", data_dir=user, system_dirs=[DEBIAN], download=False)
    assert train.x.shape == (60_000, 784) and test.x.shape == (10_000, 784)
    # The published class balance: 6,000 training and 1,000 test images of each of the 10 classes.
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) == 1.0
    assert train.label_names[9] == "Ankle boot"
    assert not user.exists()
    assert locate_dataset("fashion-mnist", data_dir=user, system_dirs=[DEBIAN]).describe() == \
        f"found in system folder {DEBIAN / 'fashion-mnist'} (MD5 checked)"
