import numpy as np
import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data.files import DataFileError, load_points, save_points
from vaelab.data.registry import load_dataset


def test_csv_with_header_and_label_column(tmp_path):
    p = tmp_path / "pts.csv"
    p.write_text("a,b,c,kind\n1,2,3,x\n4,5,6,y\n7,8,9,x\n")
    ds = load_points(p, label_column="kind")
    assert ds.x.shape == (3, 3)
    assert ds.labels.tolist() == [0, 1, 0]
    assert ds.label_names == ["x", "y"]


@pytest.mark.parametrize("d", [1, 2, 5])
def test_npy_npz_any_dimension(tmp_path, d):
    arr = np.random.default_rng(0).normal(size=(20, d))
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", x=arr, labels=np.arange(20) % 2)
    assert load_points(tmp_path / "a.npy").x.shape == (20, d)
    b = load_points(tmp_path / "b.npz")
    assert b.x.shape == (20, d) and b.labels.tolist()[:3] == [0, 1, 0]


def test_ragged_csv(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("1,2\n3,4\n5\n")
    with pytest.raises(DataFileError, match=r"bad.csv: line 3 has 1 values.*ragged"):
        load_points(p)


def test_nan_values(tmp_path):
    p = tmp_path / "nan.csv"
    p.write_text("1,2\nnan,4\n")
    with pytest.raises(DataFileError, match=r"nan.csv: 1 values are NaN or infinite \(first at row 1, column 0\)"):
        load_points(p)


def test_wrong_rank(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(DataFileError, match=r"cube.npy: expected a 2-D table.*\(2, 3, 4\)"):
        load_points(tmp_path / "cube.npy")


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        load_points(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(DataFileError, match="unsupported file type"):
        load_points(tmp_path / "x.txt")


def test_text_in_body(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("1,2\n3,oops\n")
    with pytest.raises(DataFileError, match="line 2 holds a value that is not a number"):
        load_points(p)


def test_file_split_is_a_partition(tmp_path):
    arr = np.arange(40, dtype=float).reshape(20, 2)
    np.save(tmp_path / "a.npy", arr)
    cfg = DataConfig(path=str(tmp_path / "a.npy"), test_fraction=0.25, seed=1)
    tr, te = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert len(tr) == 15 and len(te) == 5
    rows = torch.cat([tr.x, te.x])[:, 0].sort().values
    assert torch.equal(rows, torch.tensor(arr[:, 0], dtype=torch.float32))


def test_save_points_round_trip(tmp_path):
    arr = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    for name in ("o.npy", "o.csv"):
        save_points(tmp_path / name, arr, ["a", "b", "c"])
        back = load_points(tmp_path / name).x.numpy()
        np.testing.assert_allclose(back, arr, rtol=1e-6)
    with pytest.raises(DataFileError, match="use a .npy or .csv"):
        save_points(tmp_path / "o.json", arr)


def test_a_relative_path_that_is_not_here_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """Audit E28: a 0.1.0 run stored --data as typed; evaluated from another folder it said only 'no such file'."""
    from vaelab.config import DataConfig
    from vaelab.data.registry import load_dataset

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataFileError, match=r"in/points\.csv: no such file in the current folder .*relative"):
        load_dataset(DataConfig(path="in/points.csv"), "test")


def test_a_folder_given_for_points_is_named_as_a_folder_with_the_option(tmp_path):
    """Audit N11: `encode -i FOLDER` said 'no such file' and named --data."""
    with pytest.raises(DataFileError, match=r"is a folder; --input expects a \.npy, \.npz or \.csv file"):
        load_points(tmp_path, option="--input")
