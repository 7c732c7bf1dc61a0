"""IDX reader / writer: round trips, the exact byte layout, and every way a file can be broken."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.data.idx import IdxError, read_idx, write_idx

MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
TORCH_DTYPE = {
    np.uint8: torch.uint8,
    np.int8: torch.int8,
    np.int16: torch.int16,
    np.int32: torch.int32,
    np.float32: torch.float32,
    np.float64: torch.float64,
}


def _extremes(dtype: type) -> np.ndarray:
    """Values that break a reader with the wrong width, sign or byte order."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.array([info.min, info.max, 0, 1, info.max - 1], dtype=dtype)
    return np.array([-1.5, 3.25e10, 0.0, np.finfo(dtype).tiny, 1 / 3], dtype=dtype)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (3, 4, 5), (2, 1, 3, 2)])
def test_round_trip(tmp_path: Path, dtype: type, suffix: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(-100, 100, size=shape).astype(dtype)
    values.reshape(-1)[:5] = _extremes(dtype)[: values.size]
    path = tmp_path / f"a-idx{len(shape)}{suffix}"
    write_idx(path, values)

    out = read_idx(path)
    assert out.dtype == TORCH_DTYPE[dtype]
    assert tuple(out.shape) == shape
    np.testing.assert_array_equal(out.numpy(), values)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_writes_tensors_too(tmp_path: Path) -> None:
    x = torch.arange(12, dtype=torch.int32).reshape(3, 4) - 6
    write_idx(tmp_path / "t.idx", x)
    assert torch.equal(read_idx(tmp_path / "t.idx"), x)


def test_byte_layout_is_big_endian_idx(tmp_path: Path) -> None:
    """Check the bytes themselves, so a reader and writer that agree on a wrong layout fail."""
    write_idx(tmp_path / "s.idx", np.array([[1, -2, 258]], dtype=np.int16))
    expected = (
        b"\x00\x00\x0b\x02"  # magic: 0, 0, type short, 2 dimensions
        + b"\x00\x00\x00\x01\x00\x00\x00\x03"  # sizes 1 and 3, big-endian uint32
        + b"\x00\x01\xff\xfe\x01\x02"  # 1, -2, 258 as big-endian int16
    )
    assert (tmp_path / "s.idx").read_bytes() == expected


def test_reads_hand_made_file(tmp_path: Path) -> None:
    path = tmp_path / "f.idx"
    payload = np.array([1.0, -0.5], dtype=">f8").tobytes()
    path.write_bytes(b"\x00\x00\x0e\x01" + (2).to_bytes(4, "big") + payload)
    out = read_idx(path)
    assert out.dtype == torch.float64
    assert out.tolist() == [1.0, -0.5]


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "a.gz", values)
    (tmp_path / "a.gz").rename(tmp_path / "gzipped-without-suffix")
    write_idx(tmp_path / "plain", values)
    (tmp_path / "plain").rename(tmp_path / "plain-named.gz")
    for name in ("gzipped-without-suffix", "plain-named.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name).numpy(), values)


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    values = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", values)
    write_idx(tmp_path / "b.gz", values)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_empty_dimension_round_trips(tmp_path: Path) -> None:
    write_idx(tmp_path / "e.idx", np.zeros((0, 28, 28), dtype=np.uint8))
    assert tuple(read_idx(tmp_path / "e.idx").shape) == (0, 28, 28)


# --- broken files ----------------------------------------------------------------------------


def _valid_bytes() -> bytes:
    """A 2x3x4 ubyte IDX file."""
    return b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (2, 3, 4)) + bytes(24)


def _read_error(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    with pytest.raises(IdxError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message, "the error must name the file"
    return message


def test_valid_bytes_helper_is_valid(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(_valid_bytes())
    assert tuple(read_idx(tmp_path / "ok").shape) == (2, 3, 4)


def test_truncated_payload(tmp_path: Path) -> None:
    message = _read_error(tmp_path / "cut", _valid_bytes()[:-5])
    assert "expected 24 bytes of data for shape (2, 3, 4)" in message
    assert "found 19" in message
    assert "truncated" in message


def test_payload_too_long(tmp_path: Path) -> None:
    message = _read_error(tmp_path / "long", _valid_bytes() + b"\x00")
    assert "expected 24 bytes" in message and "found 25" in message


def test_mnist_sized_message(tmp_path: Path) -> None:
    header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (10000, 28, 28))
    message = _read_error(tmp_path / "images", header + bytes(1234))
    assert "expected 7840000 bytes of data for shape (10000, 28, 28)" in message
    assert "found 1234" in message


def test_bad_magic(tmp_path: Path) -> None:
    message = _read_error(tmp_path / "png", b"\x89PNG\r\n\x1a\n" + bytes(30))
    assert "not an IDX file" in message and "0x89" in message


def test_unknown_type_code(tmp_path: Path) -> None:
    content = bytearray(_valid_bytes())
    content[2] = 0x0A
    message = _read_error(tmp_path / "code", bytes(content))
    assert "0x0a" in message and "0x08 (ubyte)" in message


def test_zero_dimensions(tmp_path: Path) -> None:
    assert "0 dimensions" in _read_error(tmp_path / "zero", b"\x00\x00\x08\x00")


def test_header_cut_short(tmp_path: Path) -> None:
    message = _read_error(tmp_path / "hdr", _valid_bytes()[:9])
    assert "3 dimensions" in message and "16 header bytes" in message


@pytest.mark.parametrize("content", [b"", b"\x00\x00"])
def test_shorter_than_magic(tmp_path: Path, content: bytes) -> None:
    assert "too short" in _read_error(tmp_path / "tiny", content)


def test_corrupt_gzip(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(_valid_bytes(), mtime=0))
    compressed[12:20] = b"\xff" * 8  # wreck the deflate stream, keep the gzip magic
    message = _read_error(tmp_path / "bad.gz", bytes(compressed))
    assert "cannot be decompressed" in message


def test_truncated_gzip(tmp_path: Path) -> None:
    compressed = gzip.compress(_valid_bytes() * 50, mtime=0)
    message = _read_error(tmp_path / "cut.gz", compressed[: len(compressed) // 2])
    assert "cannot be decompressed" in message


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (np.zeros(3, dtype=np.int64), "int64"),
        (np.zeros(3, dtype=np.float16), "float16"),
        (np.zeros(3, dtype=bool), "bool"),
        (np.array(5, dtype=np.uint8), "0-dimensional"),
    ],
)
def test_write_rejects_what_idx_cannot_hold(
    tmp_path: Path, values: np.ndarray, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        write_idx(tmp_path / "x.idx", values)
    assert not (tmp_path / "x.idx").exists()


# --- the real MNIST test split ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test files not found in {MNIST_DIR}")
    return MNIST_DIR


def test_real_mnist_images(mnist_dir: Path) -> None:
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert images.dtype == torch.uint8
    assert tuple(images.shape) == (10000, 28, 28)
    assert int(images.max()) == 255 and int(images.min()) == 0
    # Digits are centred by centre of mass: the border is (almost) empty, the middle is not.
    assert images[:, 0, :].float().mean() < 1.0
    assert images[:, 10:18, 10:18].float().mean() > 50.0


def test_real_mnist_labels(mnist_dir: Path) -> None:
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert labels.dtype == torch.uint8
    assert tuple(labels.shape) == (10000,)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits
    counts = torch.bincount(labels.long(), minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
