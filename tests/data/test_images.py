"""Image loaders: MNIST-family files on disk and over (local) HTTP, digits, image folders.

Nothing here touches the internet: downloads go to an http.server on 127.0.0.1, and an autouse
fixture fails any test whose code tries to open another host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vaelab.data import download
from vaelab.data.digits import load_digits
from vaelab.data.download import DATA_DIR_ENV, ChecksumError, DatasetNotFoundError, resolve_data_dir
from vaelab.data.folders import load_image_folder
from vaelab.data.idx import IdxError, write_idx
from vaelab.data.mnist import MNIST_FAMILY, IdxResource, load_mnist_family

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
N_TRAIN, N_TEST = 11, 7  # different, so a mixed-up split shows


# --- isolation -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach beyond 127.0.0.1 or write to the real per-user cache."""
    real_urlopen = urllib.request.urlopen

    def loopback_only(request, *args, **kwargs):  # type: ignore[no-untyped-def]
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        host = urllib.parse.urlsplit(url).hostname
        assert host == "127.0.0.1", f"a test tried to open {url}; tests must stay offline"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", loopback_only)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# --- a small fake MNIST ----------------------------------------------------------------------


@dataclasses.dataclass
class FakeMnist:
    """Small IDX .gz files with the real names, and their tensors."""

    folder: Path  # holds the four .gz files
    images: dict[str, torch.Tensor]  # split -> (N, 28, 28) uint8
    labels: dict[str, torch.Tensor]  # split -> (N,) uint8
    md5: dict[str, str]  # file name -> MD5 of the .gz bytes


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeMnist:
    folder = tmp_path_factory.mktemp("www") / "good"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    spec = MNIST_FAMILY["mnist"]
    images, labels, md5 = {}, {}, {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images[split] = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        labels[split] = torch.randint(0, 10, (n,), generator=gen, dtype=torch.uint8)
        image_res, label_res = spec.files(split)
        write_idx(folder / image_res.filename, images[split])
        write_idx(folder / label_res.filename, labels[split])
    for path in folder.iterdir():
        md5[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    return FakeMnist(folder, images, labels, md5)


@pytest.fixture
def fake_spec(monkeypatch: pytest.MonkeyPatch, fake: FakeMnist) -> None:
    """Make the "mnist" entry expect the fake files' checksums."""
    spec = MNIST_FAMILY["mnist"]
    patched = {
        key: IdxResource(getattr(spec, key).filename, fake.md5[getattr(spec, key).filename])
        for key in ("train_images", "train_labels", "test_images", "test_labels")
    }
    monkeypatch.setitem(MNIST_FAMILY, "mnist", dataclasses.replace(spec, **patched))


def _copy(fake: FakeMnist, dest: Path, split: str, gunzip: bool = False) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    image_res, label_res = MNIST_FAMILY["mnist"].files(split)  # type: ignore[arg-type]
    for res, values in ((image_res, fake.images[split]), (label_res, fake.labels[split])):
        name = res.filename.removesuffix(".gz") if gunzip else res.filename
        write_idx(dest / name, values)


def _assert_is_fake(ds, fake: FakeMnist, split: str) -> None:  # type: ignore[no-untyped-def]
    n = N_TRAIN if split == "train" else N_TEST
    assert ds.x.shape == (n, 784) and ds.x.dtype == torch.float32
    assert ds.image_shape == (1, 28, 28)
    assert ds.labels.dtype == torch.int64
    torch.testing.assert_close(ds.x, fake.images[split].reshape(n, 784).float() / 255.0)
    assert torch.equal(ds.labels, fake.labels[split].long())
    assert ds.label_names == [str(d) for d in range(10)]


# --- the spec table --------------------------------------------------------------------------


def test_mnist_family_table() -> None:
    assert set(MNIST_FAMILY) == {"mnist", "fashion-mnist", "kmnist"}
    for name, spec in MNIST_FAMILY.items():
        assert spec.name == name
        assert len(spec.label_names) == 10
        assert spec.base_urls
        assert all(u.startswith("http") and u.endswith("/") for u in spec.base_urls)
        files = [spec.train_images, spec.train_labels, spec.test_images, spec.test_labels]
        assert [f.filename for f in files] == [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]
        md5s = [f.md5 for f in files]
        assert all(len(m) == 32 and int(m, 16) >= 0 for m in md5s)
        assert len(set(md5s)) == 4
    assert MNIST_FAMILY["mnist"].test_images.md5 == "9fb629c4189551a2d022fa330f9573f3"
    assert MNIST_FAMILY["fashion-mnist"].label_names[0] == "T-shirt/top"
    assert MNIST_FAMILY["fashion-mnist"].label_names[9] == "Ankle boot"
    assert MNIST_FAMILY["kmnist"].label_names[:4] == ("o", "ki", "su", "tsu")


# --- local files -----------------------------------------------------------------------------


@pytest.mark.parametrize("gunzip", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_loads_local_files(fake: FakeMnist, tmp_path: Path, split: str, gunzip: bool) -> None:
    _copy(fake, tmp_path / "root" / "mnist", split, gunzip=gunzip)
    ds = load_mnist_family("mnist", split, data_dir=tmp_path / "root", download=False)
    assert ds.name == "mnist"
    _assert_is_fake(ds, fake, split)


def test_name_aliases_and_class_names(fake: FakeMnist, tmp_path: Path) -> None:
    _copy(fake, tmp_path / "fashion-mnist", "test")
    ds = load_mnist_family("Fashion_MNIST", "test", data_dir=tmp_path, download=False)
    assert ds.name == "fashion-mnist"
    assert ds.label_names[:3] == ["T-shirt/top", "Trouser", "Pullover"]


def test_real_mnist_test_split() -> None:
    if not (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test files not found in {SHARED_DATA / 'mnist'}")
    # The shared copy is not byte-identical to the published .gz (its MD5 differs), so this
    # also checks that local files are accepted on their IDX content alone.
    ds = load_mnist_family("mnist", "test", data_dir=SHARED_DATA, download=False)
    assert ds.x.shape == (10000, 784)
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert ds.labels[:3].tolist() == [7, 2, 1]


def test_count_mismatch_is_an_error(fake: FakeMnist, tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    _copy(fake, folder, "test")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", fake.labels["test"][:-1])
    with pytest.raises(ValueError, match=f"holds {N_TEST} images but .* holds {N_TEST - 1} labels"):
        load_mnist_family("mnist", "test", data_dir=tmp_path, download=False)


def test_wrong_file_is_an_error(fake: FakeMnist, tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    _copy(fake, folder, "test")
    write_idx(folder / "t10k-images-idx3-ubyte.gz", torch.zeros(N_TEST, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        load_mnist_family("mnist", "test", data_dir=tmp_path, download=False)


def test_truncated_local_file_is_an_idx_error(fake: FakeMnist, tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    _copy(fake, folder, "test", gunzip=True)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IdxError, match="truncated"):
        load_mnist_family("mnist", "test", data_dir=tmp_path, download=False)


def test_bad_name_and_split() -> None:
    with pytest.raises(ValueError, match="unknown MNIST-family dataset 'cifar10'"):
        load_mnist_family("cifar10", download=False)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_mnist_family("mnist", "valid", download=False)  # type: ignore[arg-type]


# --- where files are looked for --------------------------------------------------------------


def test_data_dir_lookup_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "vaelab"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "vaelab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "vaelab"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_loader_follows_env_var_then_argument(
    fake: FakeMnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The train files under the env var folder, the test files under the argument's: each
    # lookup can only succeed from the folder it is supposed to use.
    _copy(fake, tmp_path / "env" / "mnist", "train")
    _copy(fake, tmp_path / "arg" / "mnist", "test")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    _assert_is_fake(load_mnist_family("mnist", "train", download=False), fake, "train")
    _assert_is_fake(
        load_mnist_family("mnist", "test", data_dir=tmp_path / "arg", download=False), fake, "test"
    )
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "env" / "mnist")):
        load_mnist_family("mnist", "test", download=False)


def test_cache_folder_is_default(fake: FakeMnist, tmp_path: Path) -> None:
    _copy(fake, tmp_path / "xdg-cache" / "vaelab" / "mnist", "test")  # see the autouse fixture
    _assert_is_fake(load_mnist_family("mnist", "test", download=False), fake, "test")


# --- downloads from a local server -----------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    """Serves files; under /cut/ it announces more bytes than it sends, then hangs up."""

    def do_GET(self) -> None:
        self.server.request_paths.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/cut/"):
            body = (Path(self.directory) / "good" / Path(self.path).name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server(fake: FakeMnist) -> Iterator[tuple[str, list[str]]]:
    """(base URL, list of request paths) of a file server on 127.0.0.1."""
    handler = partial(_Handler, directory=str(fake.folder.parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.request_paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.request_paths  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting fails at once, like a missing network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.usefixtures("fake_spec")
def test_download_success(fake: FakeMnist, server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, requests = server
    calls: list[tuple[int, int | None, str]] = []
    ds = load_mnist_family(
        "mnist", "test", data_dir=tmp_path, base_urls=[base + "/good/"],
        progress=lambda done, total, name: calls.append((done, total, name)),
    )  # fmt: skip
    _assert_is_fake(ds, fake, "test")

    folder = tmp_path / "mnist"
    names = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert _leftovers(folder) == names  # no temporary files left behind
    for name in names:
        assert (folder / name).read_bytes() == (fake.folder / name).read_bytes()
        assert (folder / name).stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
        per_file = [(d, t) for d, t, n in calls if n == name]
        size = (fake.folder / name).stat().st_size
        assert per_file[0] == (0, size) and per_file[-1] == (size, size)
        assert [d for d, _ in per_file] == sorted(d for d, _ in per_file)

    # A second load uses the files on disk and asks the server for nothing.
    n_requests = len(requests)
    load_mnist_family("mnist", "test", data_dir=tmp_path, base_urls=[base + "/good/"])
    assert len(requests) == n_requests


def test_checksum_mismatch_leaves_no_file(
    fake: FakeMnist, server: tuple[str, list[str]], tmp_path: Path
) -> None:
    # Without fake_spec the real MNIST checksums apply, and the served fake files miss them.
    base, _ = server
    with pytest.raises(ChecksumError) as info:
        load_mnist_family("mnist", "test", data_dir=tmp_path, base_urls=[base + "/good/"])
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "expected 9fb629c4189551a2d022fa330f9573f3" in message
    assert f"MD5 is {fake.md5['t10k-images-idx3-ubyte.gz']}" in message
    assert _leftovers(tmp_path / "mnist") == []


@pytest.mark.usefixtures("fake_spec")
def test_interrupted_transfer_leaves_no_file(
    server: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, _ = server
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist_family("mnist", "test", data_dir=tmp_path, base_urls=[base + "/cut/"])
    assert "connection closed after" in str(info.value)
    assert _leftovers(tmp_path / "mnist") == []


@pytest.mark.usefixtures("fake_spec")
def test_falls_back_to_second_mirror(
    fake: FakeMnist, server: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, requests = server
    start = len(requests)
    ds = load_mnist_family(
        "mnist", "test", data_dir=tmp_path, base_urls=[base + "/missing/", base + "/good/"]
    )
    _assert_is_fake(ds, fake, "test")
    assert requests[start:] == [
        "/missing/t10k-images-idx3-ubyte.gz",
        "/good/t10k-images-idx3-ubyte.gz",
        "/missing/t10k-labels-idx1-ubyte.gz",
        "/good/t10k-labels-idx1-ubyte.gz",
    ]


@pytest.mark.usefixtures("fake_spec")
def test_every_mirror_404(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DatasetNotFoundError, match="HTTP Error 404"):
        load_mnist_family("mnist", "test", data_dir=tmp_path, base_urls=[base + "/missing/"])
    assert _leftovers(tmp_path / "mnist") == []


@pytest.mark.usefixtures("fake_spec")
def test_no_network_says_where_to_put_files(tmp_path: Path) -> None:
    dead = _closed_port_url()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist_family("mnist", "train", data_dir=tmp_path, base_urls=[dead])
    message = str(info.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert str(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz") in message
    assert "--data-dir" in message and DATA_DIR_ENV in message
    assert dead in message  # the mirror that was tried
    assert _leftovers(tmp_path / "mnist") == []


@pytest.mark.usefixtures("fake_spec")
def test_download_false_does_not_try(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, requests = server
    start = len(requests)
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist_family(
            "mnist", "test", data_dir=tmp_path, download=False, base_urls=[base + "/good/"]
        )
    assert requests[start:] == []
    assert str(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz") in str(info.value)
    assert not (tmp_path / "mnist").exists()  # nothing created either


@pytest.mark.usefixtures("fake_spec")
def test_only_missing_files_are_downloaded(
    fake: FakeMnist, server: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, requests = server
    folder = tmp_path / "mnist"
    _copy(fake, folder, "test", gunzip=True)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    start = len(requests)
    ds = load_mnist_family("mnist", "test", data_dir=tmp_path, base_urls=[base + "/good/"])
    _assert_is_fake(ds, fake, "test")
    assert requests[start:] == ["/good/t10k-labels-idx1-ubyte.gz"]


def test_download_module_never_prints(
    server: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = server
    with pytest.raises(ChecksumError):
        load_mnist_family("mnist", "test", data_dir=tmp_path, base_urls=[base + "/good/"])
    assert capsys.readouterr() == ("", "")
    assert download.logger.name == "vaelab.data.download"


# --- scikit-learn digits ---------------------------------------------------------------------


def test_digits_native_size() -> None:
    from sklearn.datasets import load_digits as sk_load_digits

    sk = sk_load_digits()
    train, test = load_digits("train", size=8), load_digits("test", size=8)
    assert train.x.shape == (1437, 64) and test.x.shape == (360, 64)
    assert train.image_shape == (1, 8, 8) and train.x.dtype == torch.float32
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    # Disjoint, together every image, and each row is the sklearn image / 16 with its label.
    index = torch.cat([train.extras["index"], test.extras["index"]])
    assert sorted(index.tolist()) == list(range(1797))
    for ds in (train, test):
        rows = ds.extras["index"].numpy()
        np.testing.assert_allclose(ds.x.numpy(), sk.data[rows] / 16.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(ds.labels.numpy(), sk.target[rows])
    # Stratified: every class in the test split, in about its share.
    assert torch.bincount(test.labels, minlength=10).min() >= 30


def test_digits_split_depends_on_seed_only() -> None:
    a, b = load_digits("test", size=8, seed=1), load_digits("test", size=8, seed=1)
    c = load_digits("test", size=8, seed=2)
    assert torch.equal(a.extras["index"], b.extras["index"])
    assert not torch.equal(a.extras["index"], c.extras["index"])
    assert len(load_digits("test", size=8, test_fraction=0.5)) == 899


def test_digits_resized_to_28() -> None:
    small, big = load_digits("test", size=8), load_digits("test", size=28)
    assert big.x.shape == (360, 784) and big.image_shape == (1, 28, 28)
    assert float(big.x.min()) >= 0.0 and float(big.x.max()) <= 1.0
    assert torch.equal(small.labels, big.labels)
    # Upsampling keeps each image's ink (its mean grey level) and its layout: shrinking the
    # 28x28 images back gives nearly the 8x8 originals (not exactly: 28 / 8 is not whole).
    torch.testing.assert_close(big.x.mean(dim=1), small.x.mean(dim=1), atol=0.01, rtol=0)
    back = F.interpolate(big.x.view(-1, 1, 28, 28), size=(8, 8), mode="area").view(-1, 64)
    assert torch.corrcoef(torch.stack([back.flatten(), small.x.flatten()]))[0, 1] > 0.95


def test_digits_bad_arguments() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits("train", test_fraction=1.0)
    with pytest.raises(ValueError, match="split"):
        load_digits("all")  # type: ignore[arg-type]


# --- image folders ---------------------------------------------------------------------------


def _save_gray(path: Path, array: np.ndarray) -> None:
    """Save a (H, W) float array in [0, 1] as an 8-bit image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(array * 255).astype(np.uint8), mode="L").save(path)


def _half_white(h: int, w: int) -> np.ndarray:
    array = np.zeros((h, w))
    array[:, : w // 2] = 1.0
    return array


def test_folder_with_classes(tmp_path: Path) -> None:
    _save_gray(tmp_path / "zebra" / "a.png", np.ones((10, 12)))  # white, odd size
    _save_gray(tmp_path / "zebra" / "nested" / "b.JPG", np.zeros((40, 40)))  # black JPEG
    _save_gray(tmp_path / "zebra" / ".ipynb_checkpoints" / "b.png", np.ones((4, 4)))  # hidden
    _save_gray(tmp_path / ".trash" / "x.png", np.ones((4, 4)))  # hidden class: skipped
    _save_gray(tmp_path / "ant" / "c.png", _half_white(56, 56))
    # An RGBA PNG as matplotlib writes it: opaque grey level 0.5.
    (tmp_path / "ant").mkdir(exist_ok=True)
    matplotlib.image.imsave(tmp_path / "ant" / "d.png", np.full((28, 28), 0.5), cmap="gray",
                            vmin=0.0, vmax=1.0)  # fmt: skip
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "empty-class").mkdir()

    ds = load_image_folder(tmp_path)
    assert ds.label_names == ["ant", "zebra"]  # sorted; folders without images are skipped
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.x.shape == (4, 784) and ds.image_shape == (1, 28, 28)
    images = ds.x.view(4, 28, 28)
    assert images[0, :, :12].min() > 0.99 and images[0, :, 16:].max() < 0.01  # half white
    assert abs(float(images[1].mean()) - 0.5) < 0.01  # mid grey PNG
    assert images[2].min() > 0.99  # white
    assert images[3].max() < 0.05  # black JPEG (lossy, so not exactly 0)
    assert ds.name == f"folder:{tmp_path}"


def test_flat_folder_has_no_labels(tmp_path: Path) -> None:
    for i in range(3):
        _save_gray(tmp_path / f"{i}.png", np.full((28, 28), i / 2))
    ds = load_image_folder(tmp_path, size=16)
    assert ds.labels is None and ds.label_names is None
    assert ds.x.shape == (3, 256) and ds.image_shape == (1, 16, 16)
    torch.testing.assert_close(ds.x.mean(dim=1), torch.tensor([0.0, 0.5, 1.0]), atol=0.01, rtol=0)


def test_color_images(tmp_path: Path) -> None:
    red = np.zeros((20, 20, 3), dtype=np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    _save_gray(tmp_path / "white.jpg", np.ones((20, 20)))

    rgb = load_image_folder(tmp_path, grayscale=False)
    assert rgb.image_shape == (3, 28, 28) and rgb.x.shape == (2, 3 * 784)
    channels = rgb.x.view(2, 3, -1).mean(dim=2)  # files sorted: red.png, white.jpg
    torch.testing.assert_close(channels[0], torch.tensor([1.0, 0.0, 0.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(channels[1], torch.ones(3), atol=0.02, rtol=0)

    gray = load_image_folder(tmp_path)
    assert abs(float(gray.x[0].mean()) - 0.299) < 0.01  # luma of pure red


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}.*does not exist"):
        load_image_folder(tmp_path / "nope")


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("hi")
    (tmp_path / ".hidden.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:
        load_image_folder(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert ".png" in str(info.value) and ".jpg" in str(info.value)


def test_mixed_layout_is_an_error(tmp_path: Path) -> None:
    _save_gray(tmp_path / "top.png", np.ones((4, 4)))
    _save_gray(tmp_path / "cls" / "a.png", np.ones((4, 4)))
    with pytest.raises(ValueError, match="both at its top level"):
        load_image_folder(tmp_path)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path)


def test_binarize_is_one_bernoulli_draw_in_xs_dtype() -> None:
    """x_bin = 1[u < x] with u ~ U(0, 1) from the generator, in x's dtype: the bits of the draw
    are those of torch.rand then a comparison (what every seeded binarized run was trained on),
    and the mean of many draws is x."""
    from vaelab.data.pixels import binarize

    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))
    x[0, :3] = torch.tensor([0.0, 1.0, 0.5])
    bits = binarize(x, torch.Generator().manual_seed(7))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    assert bits.dtype == x.dtype
    assert torch.equal(bits, (u < x).float())
    assert bits[0, 0] == 0 and bits[0, 1] == 1
    draws = torch.stack([binarize(x[:4], torch.Generator().manual_seed(i)) for i in range(4000)])
    torch.testing.assert_close(draws.mean(0), x[:4], atol=0.04, rtol=0)
