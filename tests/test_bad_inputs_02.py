"""The failing cases of the 0.2 audit (../shared/audits/bad-inputs-0.2.md), one test per family
of mistake. Each test names the audit's case ids and says what the mistake is; none may print a
traceback, and a file that existed before a refused or failed command is byte-identical after it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import invoke, tiny_config
from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.config import ConfigError, RunConfig, read_toml
from vaelab.data.files import DataFileError, load_points
from vaelab.memory import SizeError
from vaelab.train import train_run

OLD = b"x1,x2\n1,2\n3,4\n"  # the user's existing file: must survive every failure byte for byte


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def leftovers(folder: Path) -> list[str]:
    """Temporary files of the one writer left in ``folder`` (there must be none)."""
    return [p.name for p in folder.rglob(f"*{ckpt._TMP_SUFFIX}")]


# --------------------------------------------------------------------------- 1. the one writer

def _points(tmp_path: Path) -> Path:
    path = tmp_path / "points.csv"
    np.savetxt(path, np.random.default_rng(0).normal(size=(5, 2)), delimiter=",", header="x1,x2", comments="")
    return path


# Every command that writes a file the user names (or a figure into the run): the argv that
# writes ``target``, built from the run, the folder and the target.
WRITERS = {
    "sample": lambda run, tmp, target: ["sample", run, "-n", 5, "-o", target, "--device", "cpu"],
    "encode": lambda run, tmp, target: ["encode", run, "-i", _points(tmp), "-o", target, "--device", "cpu"],
    "decode": lambda run, tmp, target: ["decode", run, "-i", _points(tmp), "-o", target, "--device", "cpu"],
    "report": lambda run, tmp, target: ["report", run, "--figures", "samples", "--out", target],
}


def _fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk, simulated: the data never reaches the disk (ENOSPC at fsync)."""
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)


@pytest.mark.parametrize("command", sorted(WRITERS))
@pytest.mark.parametrize("failure", ["disk full", "named pipe", "device"])
def test_the_one_writer_never_destroys_an_existing_file(run, tmp_path, monkeypatch, command, failure):
    """RE02, RE13, DF06, DF04, DF05: an output path that is a special file was renamed over
    (a FIFO and /dev/full became regular files), and a full disk truncated an existing CSV in
    place. Property: for every command that writes a user file, whatever fails, what stood at
    the path before is there after, byte for byte (or still the same special file), no
    temporary file is left, and the message names the file and the cause."""
    suffix = ".html" if command == "report" else ".csv"
    target = tmp_path / f"out{suffix}"
    if failure == "disk full":
        target.write_bytes(OLD)
        _fail_fsync(monkeypatch)
    elif failure == "named pipe":
        os.mkfifo(target)
    else:
        try:  # a /dev/null-like character device (1, 3) of our own, never the system's
            os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device node needs root")
    mode = os.lstat(target).st_mode
    result = invoke(*WRITERS[command](run, tmp_path, target))
    assert result.exit_code == 2, result.output
    # (report writes its figures first: on a full disk the first file it cannot write is named)
    assert str(target) in result.output or (command == "report" and "samples.png: cannot write" in result.output)
    if failure == "disk full":
        assert "No space left on device" in result.output
        assert command == "report" or "the previous file is unchanged" in result.output
        assert target.read_bytes() == OLD
    else:
        assert "not a regular file" in result.output
        assert os.lstat(target).st_mode == mode  # still the same special file
    assert leftovers(tmp_path) == []


def test_plot_on_a_full_disk_names_the_figure_and_keeps_the_old_one(run, monkeypatch):
    """DF05: plot on a full disk said only '[Errno 28] No space left on device'."""
    old = run / "figures" / "samples.png"
    old.parent.mkdir(exist_ok=True)
    old.write_bytes(b"old figure")
    _fail_fsync(monkeypatch)
    result = invoke("plot", run, "--figures", "samples")
    assert result.exit_code == 2 and f"{old}: cannot write (No space left on device)" in result.output
    assert old.read_bytes() == b"old figure" and leftovers(run) == []


def test_a_real_full_disk_keeps_the_old_csv(run, tmp_path):
    """DF06: `sample -n 200000 -o old.csv` on a nearly full disk destroyed old.csv and left a
    truncated CSV. On a real 1 MB tmpfs where the machine allows mounting one."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        (small / "old.csv").write_bytes(OLD)
        (small / "filler").write_bytes(b"\0" * 900_000)
        result = invoke("sample", run, "-n", 200_000, "-o", small / "old.csv", "--device", "cpu")
        assert result.exit_code == 2 and "No space left on device" in result.output
        assert str(small / "old.csv") in result.output
        assert (small / "old.csv").read_bytes() == OLD
        assert sorted(p.name for p in small.iterdir()) == ["filler", "old.csv"]
    finally:
        subprocess.run(["umount", str(small)], check=False)


@pytest.mark.parametrize("command", ["encode", "decode"])
@pytest.mark.parametrize("spelling", ["same path", "another spelling", "hard link"])
def test_an_output_that_is_the_commands_own_input_is_refused(run, tmp_path, command, spelling):
    """EN03, DE06: `encode -i pts.csv -o pts.csv` replaced the user's points with their codes,
    exit 0. The output is compared with the inputs as files, so ./x, a/../x or a hard link
    to the input count as the input too."""
    points = _points(tmp_path)
    before = points.read_bytes()
    out = {"same path": points, "another spelling": tmp_path / "sub" / ".." / points.name,
           "hard link": tmp_path / "link.csv"}[spelling]
    if spelling == "another spelling":
        (tmp_path / "sub").mkdir()
    if spelling == "hard link":
        os.link(points, out)
    result = invoke(command, run, "-i", points, "-o", out, "--device", "cpu")
    assert result.exit_code == 2 and "is the command's own input" in result.output
    assert points.read_bytes() == before


def test_a_condition_file_is_an_input_too(tmp_path):
    """EN03's kind, for the --condition file of sample: it must not be the output either."""
    cond = tmp_path / "c.csv"
    cond.write_text("1\n2\n")
    with pytest.raises(ckpt.WriteError, match="is the command's own input"):
        ckpt.check_output_path(cond, inputs=[cond])
    assert cond.read_text() == "1\n2\n"


@pytest.mark.parametrize("case", ["SA21", "PL14"])
def test_a_file_where_a_folder_is_needed_is_named(run, tmp_path, case):
    """SA21, PL14: '[Errno 17] File exists' when a plain file stands where the output's folder
    should be (-o file/x.csv; RUN/figures is a file)."""
    if case == "SA21":
        (tmp_path / "afile").write_text("x")
        result = invoke("sample", run, "-n", 5, "-o", tmp_path / "afile" / "x.csv", "--device", "cpu")
        blocker = tmp_path / "afile"
    else:
        shutil.rmtree(run / "figures", ignore_errors=True)
        (run / "figures").write_text("x")
        result = invoke("plot", run, "--figures", "samples")
        blocker = run / "figures"
    assert result.exit_code == 2 and f"not a folder: {blocker} is a file" in result.output
    assert blocker.read_text() == "x"


def test_an_empty_or_looping_output_name_is_refused(tmp_path):
    """RO21's kind for output files: an empty name became '.', a symlink loop a raw errno."""
    with pytest.raises(ckpt.WriteError, match="the output file name .* is empty"):
        ckpt.atomic_write_bytes("", b"x", what="--out")
    os.symlink("loop.csv", tmp_path / "loop.csv")
    with pytest.raises(ckpt.WriteError, match="symbolic link loop"):
        ckpt.atomic_write_bytes(tmp_path / "loop.csv", b"x")


def test_a_link_to_a_regular_file_is_written_through_and_keeps_its_mode(tmp_path):
    """The writer replaces the file a link names (the link stays a link) and keeps the old
    file's permission bits: writing a report over a shared file does not change who may read it."""
    real = tmp_path / "real.csv"
    real.write_bytes(OLD)
    real.chmod(0o640)
    os.symlink(real, tmp_path / "link.csv")
    ckpt.atomic_write_bytes(tmp_path / "link.csv", b"new")
    assert (tmp_path / "link.csv").is_symlink() and real.read_bytes() == b"new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_a_read_only_run_can_be_reported_elsewhere(run, tmp_path):
    """RM02, RE09: a read-only run could not be reported at all ('[Errno 30] ... ro/figures'), even
    with --out. Simulated with os.access (root ignores permission bits)."""
    real_access = os.access

    def access(path, mode, *a, **k):  # the run folder reads as read-only, nothing else
        if Path(path) == run and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "access", access)
        result = invoke("report", run, "--figures", "samples")
        assert result.exit_code == 2 and "the run folder is read-only" in result.output and "--out" in result.output
        out = tmp_path / "elsewhere" / "r.html"
        result = invoke("report", run, "--figures", "samples", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "read-only" in result.output


# --------------------------------------------------------------------------- 2. data fingerprint

def _csv(path: Path, seed: int, scale: float = 1.0, shift: float = 0.0) -> Path:
    x = np.random.default_rng(seed).normal(size=(200, 3)) * scale + shift
    np.savetxt(path, x, delimiter=",", header="a,b,c", comments="")
    return path


def _file_run(tmp_path: Path) -> tuple[Path, Path]:
    data = _csv(tmp_path / "data.csv", 0)
    out = tmp_path / "run"
    train_run(tiny_config(data={"path": str(data)}, train={"epochs": 2}), out)
    return data, out


def test_resume_on_changed_data_is_refused_naming_the_file(tmp_path):
    """RO07: the run's CSV was replaced by other data of the same width (mean 100, scale 50);
    --resume trained on, exit 0, its metrics now describing the new data."""
    data, out = _file_run(tmp_path)
    assert ckpt.DATA_FILE in json.loads((out / ckpt.MANIFEST_FILE).read_text())["files"]
    before = (out / ckpt.WEIGHTS_FILE).read_bytes()
    _csv(data, 9, scale=50, shift=100)
    changed = rf"data changed since the run began \({data}: the file was [\d,]+ bytes, now"
    with pytest.raises(ConfigError, match=changed):
        train_run(tiny_config(data={"path": str(data)}, train={"epochs": 4}), out, resume=True)
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == before
    np.savetxt(data, np.random.default_rng(0).normal(size=(150, 3)), delimiter=",", header="a,b,c", comments="")
    with pytest.raises(ConfigError, match=r"training split was 180 x 3 values, now 135 x 3"):
        train_run(tiny_config(data={"path": str(data)}, train={"epochs": 4}), out, resume=True)


def test_resume_on_the_same_data_goes_on_and_an_old_run_gets_a_note(tmp_path):
    """RO07's other side: unchanged data resume as before; a run written before the fingerprint
    existed resumes with a note (not an error) and is checked from then on."""
    data, out = _file_run(tmp_path)
    train_run(tiny_config(data={"path": str(data)}, train={"epochs": 3}), out, resume=True)
    # Make it a run from before the fingerprint: drop data.json from the files and the manifest.
    manifest = json.loads((out / ckpt.MANIFEST_FILE).read_text())
    del manifest["files"][ckpt.DATA_FILE]
    (out / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))
    (out / ckpt.DATA_FILE).unlink()
    with pytest.warns(UserWarning, match="written before vaelab recorded a fingerprint"):
        train_run(tiny_config(data={"path": str(data)}, train={"epochs": 4}), out, resume=True)
    assert ckpt.load_data_fingerprint(out) is not None
    _csv(data, 5)
    with pytest.raises(ConfigError, match="training data changed"):
        train_run(tiny_config(data={"path": str(data)}, train={"epochs": 5}), out, resume=True)


def test_a_sweep_member_is_checked_by_the_same_preparation(tmp_path):
    """RO07 for sweeps: `sweep --resume` continues members through train.run.check_same_data."""
    from vaelab.train.run import check_same_data

    data, out = _file_run(tmp_path)
    cfg = ckpt.load(out).config
    from vaelab.data.registry import load_dataset

    assert check_same_data(out, cfg, load_dataset(cfg.data, "train")) is not None
    _csv(data, 3)
    with pytest.raises(ConfigError, match="training data changed"):
        check_same_data(out, cfg, load_dataset(cfg.data, "train"))


# --------------------------------------------------------------------------- 3. non-finite metrics

def test_nan_metrics_are_an_error_never_a_verdict(run, monkeypatch):
    """TR115: --nonfinite skip --lr 1e10 ended with exploded weights, a table of nan and
    'No posterior collapse: ... I(x; z) = nan'. Non-finite held-out metrics are an error."""
    import importlib

    from vaelab.diagnostics import collapse_verdict

    ev = importlib.import_module("vaelab.evaluate")

    real = ev.evaluate

    def exploded(*args, **kwargs):
        metrics = real(*args, **kwargs)
        return {**metrics, "kl": float("inf"), "mutual_info": float("nan"), "mutual_info_se": float("nan")}

    monkeypatch.setattr(ev, "evaluate", exploded)
    result = invoke("eval", run, "--k", 4, "--device", "cpu")
    assert result.exit_code == 2 and "the held-out evaluation is not finite (kl = inf, mutual_info = nan)" \
        in result.output
    assert "No posterior collapse" not in result.output
    assert collapse_verdict({"mutual_info": float("nan"), "mutual_info_se": 0.1}) is None


# --------------------------------------------------------------------------- 4. integrity

def test_an_edited_history_is_named_by_every_reader(run, tmp_path):
    """RD10: history.csv edited (last loss -> 0.001) was drawn by report and printed by compare
    as the run's 'final training loss 0.001', although the manifest records its sha256."""
    lines = (run / "history.csv").read_text().splitlines()
    cells = lines[-1].split(",")
    cells[2] = "0.001"
    (run / "history.csv").write_text("\n".join([*lines[:-1], ",".join(cells)]) + "\n")
    with pytest.raises(ckpt.IntegrityError, match=r"history\.csv: does not match the sha256"):
        ckpt.load_history(run)
    assert ckpt.load(run).model is not None  # the model itself still loads
    result = invoke("report", run, "--figures", "training_curves")
    assert result.exit_code == 2 and "history.csv: does not match the sha256" in result.output


def test_a_missing_manifest_is_an_error_not_a_bypass(run):
    """RD05 / RD03: the advice for a damaged checkpoint.json was to delete it, which switched
    every check off: corrupted weights then evaluated silently. A run vaelab made (it has the
    ownership marker) without its manifest is refused with its own remedy; a run of vaelab
    0.1.0 (no marker, no manifest) still loads."""
    (run / ckpt.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ckpt.IntegrityError, match="damaged") as err:
        ckpt.load(run)
    assert "delete it to load" not in str(err.value)
    (run / ckpt.MANIFEST_FILE).unlink()
    with pytest.raises(ckpt.IntegrityError, match=r"checkpoint\.json: missing.*restore checkpoint\.json"):
        ckpt.load(run)
    result = invoke("eval", run, "--k", 4, "--device", "cpu")
    assert result.exit_code == 2 and "checkpoint.json: missing" in result.output
    # Deleting the marker as well is no way around it (audit recount): the run has data.json,
    # which vaelab 0.1.0 never wrote.
    (run / ckpt.MARKER_FILE).unlink()
    with pytest.raises(ckpt.IntegrityError, match=r"checkpoint\.json: missing"):
        ckpt.load(run)
    (run / ckpt.DATA_FILE).unlink()  # now a 0.1.0-style run: no manifest, marker or fingerprint
    assert ckpt.load(run).model is not None


# --------------------------------------------------------------------------- 5. sizes

@pytest.mark.parametrize("case, train", [
    ("TC17", {"epochs": 99999999999999999999}),
    ("TR118", {"steps": 10_000_000_000_000_000_000}),
])
def test_budgets_beyond_64_bits_are_refused(case, train):
    """TC17, TR117, TR118: epochs / steps beyond int64 were accepted and trained 'forever' in silence."""
    with pytest.raises(ConfigError, match="beyond the 64-bit integers"):
        RunConfig.from_dict({"train": train})


def test_a_budget_of_years_is_refused_before_anything_is_written(tmp_path):
    """TR117's kind within 64 bits: 10^11 steps would train for months without a word."""
    with pytest.raises(SizeError, match=r"--steps 100000000000 is 100,000,000,000 optimizer steps: .* 116 days"):
        train_run(RunConfig.from_dict({"data": {"name": "ring", "n_train": 256, "n_test": 128},
                                       "train": {"steps": 10**11, "batch_size": 64}}), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_eval_k_is_checked_before_training(tmp_path):
    """TR79: --eval-k 10^9 passed every check, trained the whole budget, then died in the final
    evaluation with an 800 GB allocator traceback."""
    with pytest.raises(SizeError, match=r"--eval-k 1,000,000,000 importance samples"):
        train_run(tiny_config(eval={"k": 10**9}), tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("case, k", [
    ("EV02", 10**7),  # hung in silence for minutes
    ("EV16", 10**30),  # a randn() overflow traceback with 50 C++ frames
])
def test_eval_k_is_bounded_in_memory_and_time(run, case, k):
    """EV02, EV16, AP04: `eval --k` is checked against memory and work before any is done; the
    message gives the memory or the time it would need (which comes first depends on the machine)."""
    result = invoke("eval", run, "--k", k, "--device", "cpu")
    assert result.exit_code == 2 and f"k {k:,} " in result.output
    assert "would need about" in result.output or "decoder passes" in result.output


def test_the_library_evaluate_checks_k_too(run):
    """AP04: evaluate(model, data, k=10**9) raised a raw allocator error."""
    from vaelab.data.registry import load_dataset
    from vaelab.evaluate import evaluate

    r = ckpt.load(run)
    with pytest.raises(SizeError, match="importance samples"):
        evaluate(r.model, load_dataset(r.config.data, "test"), k=10**9)


def test_a_huge_sweep_grid_is_refused_before_it_is_built():
    """SW07: --seeds 10^8 grew to 4.6 GB in 90 s building the grid, with no output."""
    from vaelab.sweep.grid import GridError, make_grid

    with pytest.raises(GridError, match=r"100,000,000 members .*--seeds 100000000"):
        make_grid(RunConfig(), {}, seeds=100_000_000)
    with pytest.raises(GridError, match=r"20,000 members \(200 values of train.beta \(--beta\) × --seeds 100\)"):
        make_grid(RunConfig(), {"train.beta": [0.01 * (i + 1) for i in range(200)]}, seeds=100)


def test_a_huge_image_size_is_refused_before_any_image_is_read(tmp_path):
    """TR124, IF15: --image-size 10^9 overflowed torch's size computation (traceback); 2000 was
    refused only after every image was loaded, naming diversity_samples (no flag)."""
    from PIL import Image

    from vaelab.data.folders import load_image_folder

    for i in range(3):
        Image.new("L", (8, 8), color=i * 40).save(tmp_path / f"{i}.png")
    with pytest.raises(SizeError, match=r"--image-size 1000000000 .*use a smaller --image-size"):
        load_image_folder(tmp_path, size=10**9)
    # Through `vaelab train`: the check before reading built the model's shapes first and overflowed.
    for size in (10**9, 10**5):
        result = invoke("train", "--data", tmp_path, "--image-size", size, "--epochs", "1", "--out",
                        tmp_path / f"r{size}")
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"images of --image-size {size}" in said and "use a smaller --image-size" in said
        assert not (tmp_path / f"r{size}").exists()


def test_an_evaluation_batch_keeps_half_the_memory_free(monkeypatch):
    """EV02 (recount): --k 10^7 on 100 test points passed both checks (24 GB of a 25.3 GB machine,
    exactly 10^9 passes) and swapped without a word; a batch may now take at most half."""
    from torch import nn

    from vaelab import memory
    from vaelab.sizes import check_eval_fits

    monkeypatch.setattr(memory, "physical_memory", lambda: 25_300_000_000)
    with pytest.raises(SizeError, match=r"100 points × --k 10,000,000 importance samples .* more than half of"):
        check_eval_fits(nn.Linear(2, 2), 100, 10**7, 100, "--k")
    check_eval_fits(nn.Linear(2, 2), 100, 10**6, 100, "--k")  # 2.4 GB: fine


def test_a_ten_megabyte_line_is_read_quickly(tmp_path):
    """UF35: a one-line CSV of 2,000,000 values gave no output for 120 s (a quadratic column
    lookup); it is now read at once and refused for what it is (one row)."""
    path = tmp_path / "long.csv"
    path.write_text(",".join(["1.0"] * 200_000))
    assert load_points(path).x.shape == (1, 200_000)  # 200k columns: was ~2 min, now well under a second
    with pytest.raises(Exception, match="cannot be split"):
        from vaelab.data.registry import load_dataset
        load_dataset(RunConfig.from_dict({"data": {"path": str(path)}}).data, "train")


# --------------------------------------------------------------------------- 6. tracebacks

@pytest.mark.parametrize("case, content, message", [
    ("TC15", bytes(range(0xa8, 0x100)) * 2, r"not a UTF-8 text file \(byte 0xa8 at position 0\)"),
    ("TC21", b"# caf\xe9\n[train]\nepochs = 2\n", r"not a UTF-8 text file \(byte 0xe9 at position 5\)"),
])
def test_a_toml_file_that_is_not_utf8_is_named(tmp_path, case, content, message):
    """TC15, TC21: a binary or Latin-1 --config gave a UnicodeDecodeError traceback."""
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_toml(path)


def test_a_toml_byte_order_mark_and_a_key_outside_tables(tmp_path):
    """TC08: a UTF-8 BOM (Windows editors) was 'Invalid statement'; TC22: `epochs = 2` above
    every table was called an 'unknown table [epochs]'."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbf[train]\nepochs = 2\n")
    assert read_toml(path) == {"train": {"epochs": 2}}
    with pytest.raises(ConfigError, match=r"epochs = 2 is outside any table; put it under \[train\]"):
        RunConfig.from_dict({"epochs": 2}, "c.toml")


def test_numpy_files_of_every_valid_and_damaged_kind(tmp_path):
    """UF41: a valid big-endian .npy gave a ValueError traceback (it is read now); UF43: a
    truncated .npz gave zipfile.BadZipFile; UF19: a structured array was 'rank 1'."""
    x = np.random.default_rng(0).normal(size=(30, 2))
    np.save(tmp_path / "be.npy", x.astype(">f8"))
    assert np.allclose(load_points(tmp_path / "be.npy").x.numpy(), x.astype(np.float32))
    np.savez(tmp_path / "t.npz", x=x)
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"not a valid \.npz \(zip\) file"):
        load_points(tmp_path / "trunc.npz")
    np.save(tmp_path / "s.npy", np.zeros(10, dtype=[("x", "f4"), ("y", "f4")]))
    with pytest.raises(DataFileError, match="structured array with fields x, y"):
        load_points(tmp_path / "s.npy")


@pytest.mark.parametrize("case", ["UF31 loop", "UF29 fifo", "UF45 device", "UF30 link to device"])
def test_a_data_path_that_is_not_a_regular_file_says_what_it_is(tmp_path, case):
    """UF31: a symlink loop gave a 'Symlink loop' traceback; UF29, UF30, UF45, AP30, EN10: a FIFO,
    /dev/null or a link to /dev/urandom were reported as 'no such file'."""
    path = tmp_path / "d.csv"
    if case.endswith("loop"):
        os.symlink("d.csv", path)
        expected = "symbolic link loop"
    elif case.endswith("fifo"):
        os.mkfifo(path)
        expected = r"is a named pipe \(FIFO\), not a regular file"
    elif case.endswith("link to device"):
        os.symlink("/dev/urandom", path)
        expected = r"is a character device \(.* -> /dev/urandom\), not a regular file"
    else:
        path = Path("/dev/null")
        expected = "is a character device, not a regular file"
    with pytest.raises(DataFileError, match=expected):
        load_points(path)
    result = invoke("train", "--data", path, "--epochs", 1, "--no-eval", "--no-report", "--device", "cpu",
                    "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "not a regular file" in result.output or "symbolic link loop" in result.output


def test_mps_on_a_machine_without_it_is_refused():
    """TR83: --device mps on Linux gave 'PyTorch is not linked with support for mps devices'."""
    import torch

    from vaelab.cli.common import pick_device

    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ValueError, match="MPS .* is not available here; use --device cpu or auto"):
        pick_device("mps")


# --------------------------------------------------------------------------- 8. the lock

def test_a_stale_lock_record_is_not_named_as_the_holder(run):
    """RO27: `.vaelab-lock` copied with `cp -a` kept 'pid 12117 on vm' of the original training;
    when another program held the copy's lock, vaelab named that stale pid as the holder."""
    import socket

    (run / ckpt.LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(),
                                                 "since": "2026-12-06 12:55:08"}))
    holder = subprocess.Popen(["flock", "-x", str(run / ckpt.LOCK_FILE), "sleep", "30"])
    try:
        import time

        for _ in range(100):
            if ckpt.is_locked(run):
                break
            time.sleep(0.05)
        stale = r"not the one the lock file names, pid 4206649.*no longer running"
        with pytest.raises(ckpt.RunLockedError, match=stale):
            ckpt.RunLock(run).acquire()
        (run / ckpt.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "other-machine", "since": "x"}))
        with pytest.raises(ckpt.RunLockedError, match="another machine, or a record copied with the run"):
            ckpt.RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_that_is_a_folder_is_named(run):
    """RO26: .vaelab-lock as a folder was reported as an unwritable run directory."""
    (run / ckpt.LOCK_FILE).unlink(missing_ok=True)
    (run / ckpt.LOCK_FILE).mkdir()
    with pytest.raises(ckpt.WriteError, match=r"\.vaelab-lock: is a folder, not vaelab's lock file; remove it"):
        ckpt.RunLock(run).acquire()


# --------------------------------------------------------------------------- 7. advice

# Flags that messages name but that belong to other programs (torchrun) or are placeholders.
_FOREIGN_FLAGS = {"--help", "--nproc-per-node", "--standalone", "--flag", "--no-", "--vq-", "--tempered-tau-end",
                  # sbatch / srun / torchrun options in the scripts of vaelab.cluster
                  "--array", "--job-name", "--output", "--open-mode", "--requeue", "--signal", "--ntasks",
                  "--ntasks-per-node", "--kill-on-bad-exit", "--nnodes", "--rdzv-backend", "--rdzv-endpoint",
                  "--rdzv-id", "--parsable",
                  "--reinstall"}  # apt-get's, in the advice for a damaged system copy of a dataset
_COMMAND = re.compile(r"vaelab (train|eval|sample|encode|decode|plot|report|compare|sweep|explore|datasets)"
                      r"((?:\s+(?:--?[a-z][\w-]*|[A-Z_]+|N|\.\.\.))*)")


def _message_strings() -> list[tuple[str, str]]:
    """Every string literal of the library and the CLI (f-string parts included), with its place."""
    import ast

    import vaelab

    root = Path(vaelab.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if "explorer" in path.parts:  # being rewritten elsewhere (see the report of issue 19)
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((f"{path.relative_to(root)}:{node.lineno}", node.value))
    return found


def test_every_flag_a_message_names_exists_on_the_command_it_names():
    """SW22b, TR68, IF15, EV05 (item 7): messages pointed to `vaelab eval RUN --eval-k N` (eval has
    --k), to diversity_samples (no flag) and to editing config.json (which the checksum then
    refuses). Every --flag in a message must be an option of vaelab; one written after
    `vaelab COMMAND` must be an option of that command; no message advises editing a run's config."""
    import typer

    from vaelab.sweep.grid import flag_table

    group = typer.main.get_command(app)
    options = {name: {"--help"} | {o for p in c.params for o in (*p.opts, *p.secondary_opts)}
               for name, c in group.commands.items()}  # type: ignore[attr-defined]
    # The scan sees the audit's own example (SW22b's advice), so it could fail:
    advice = "re-evaluate with `vaelab eval RUN --eval-k N` for another"
    assert _COMMAND.findall(advice) == [("eval", " RUN --eval-k N")]
    assert "--eval-k" not in options["eval"]
    family = set(flag_table())
    root = {o for p in group.params for o in (*p.opts, *p.secondary_opts)}  # vaelab's own: --version
    every = set().union(*options.values()) | root | family | _FOREIGN_FLAGS
    unknown, misplaced, edits = [], [], []
    for where, text in _message_strings():
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
            if flag not in every:
                unknown.append(f"{where}: {flag}")
        for command, tail in _COMMAND.findall(text):
            for flag in re.findall(r"--[a-z][\w-]*", tail):
                if flag not in options[command] | (family if command in ("train", "sweep") else set()):
                    misplaced.append(f"{where}: vaelab {command} ... {flag}")
        if re.search(r"edit (the run's )?config\.json|in the run's config\b", text):
            edits.append(where)
    assert unknown == [] and misplaced == [] and edits == []


# --------------------------------------------------------------------------- 9. out of range

@pytest.mark.parametrize("case", ["EN12", "DE03", "PL18"])
def test_inputs_far_outside_the_model_get_a_warning(run, tmp_path, case):
    """EN12, DE03, PL18: points at 1e30 got ordinary codes, z = 1e30 an ordinary decoded point and
    `plot --points 1e30,0` an ordinary posterior ellipse, with no word. They still run, with a warning."""
    far = tmp_path / "far.csv"
    far.write_text("a,b\n1e30,0\n0,0\n")
    if case == "PL18":
        result = invoke("plot", run, "--figures", "samples", "--points", "1e30,0")
    else:
        result = invoke("encode" if case == "EN12" else "decode", run, "-i", far, "-o", tmp_path / "o.csv",
                        "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "far outside" in result.output
    assert ("1 of 1 points" if case == "PL18" else "1 of 2") in result.output


def test_raw_pixels_are_refused_for_an_image_run(run, tmp_path, monkeypatch):
    """EN06: an image run encoded raw 0..255 pixels without complaint (the explorer refuses them)."""
    import vaelab.data.registry as registry
    from vaelab.cli import commands

    monkeypatch.setattr(registry, "is_image_config", lambda config: True)  # the tiny run stands in for one
    pixels = tmp_path / "px.npy"
    np.save(pixels, np.full((3, 2), 255.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"holds values from 255 to 255; this image run takes grey levels in "
                                         r"\[0, 1\] \(divide by 255\)"):
        commands._check_pixels(ckpt.load(run), torch_tensor(np.load(pixels)), pixels)


def torch_tensor(a: np.ndarray):
    import torch

    return torch.as_tensor(a)


# --------------------------------------------------------------------------- unclear messages

@pytest.mark.parametrize("case, data, expected", [
    ("TR108", "./moons", r"\./moons: no such file \(did you mean the dataset moons\?"),
    ("TR109", "moons.csv", r"moons\.csv: no such file \(did you mean the dataset moons\?"),
    ("TR110", "", r"--data '' is empty"),
    ("SW05", "moons,circles", r"--data moons,circles: takes one dataset"),
])
def test_a_data_argument_that_names_nothing_is_named_first(tmp_path, monkeypatch, case, data, expected):
    """TR108, TR109, TR110, TR110b, SW05: a --data path to nothing (or an empty one, read as the
    current folder) was reported as --n-train not applying, or an unrelated image 3 folders down."""
    monkeypatch.chdir(tmp_path)
    for command in ("train", "sweep"):
        result = invoke(command, "--data", data, "--n-train", 300, "--epochs", 1, "--device", "cpu",
                        "--out", tmp_path / f"o-{command}")
        assert result.exit_code == 2 and re.search(expected, result.output), result.output


@pytest.mark.parametrize("case", ["RD18 folder", "RD20 link to a device", "RD21 fifo history"])
def test_a_run_file_that_is_not_a_regular_file_is_named(run, case):
    """RD18, RD20: model.safetensors as a folder or a link to /dev/zero was 'missing'; RD21: a FIFO
    history.csv made eval block forever."""
    if case.startswith("RD18"):
        (run / ckpt.WEIGHTS_FILE).unlink()
        (run / ckpt.WEIGHTS_FILE).mkdir()
        expected = r"model\.safetensors: is a folder"
    elif case.startswith("RD20"):
        (run / ckpt.WEIGHTS_FILE).unlink()
        os.symlink("/dev/zero", run / ckpt.WEIGHTS_FILE)
        expected = r"model\.safetensors: is a character device \(.* -> /dev/zero\)"
    else:
        (run / ckpt.HISTORY_FILE).unlink()
        os.mkfifo(run / ckpt.HISTORY_FILE)
        expected = r"history\.csv: is a named pipe \(FIFO\), not a regular file"
    result = invoke("eval", run, "--k", 4, "--device", "cpu")
    assert result.exit_code == 2 and re.search(expected, result.output), result.output


def test_advice_for_a_lost_training_state_fits_sweeps_too():
    """SW30: a damaged member's state.pt said 'train again with --overwrite', which sweeps refuse."""
    from vaelab.checkpoint.records import _REDO

    assert "vaelab sweep --out SWEEP --resume" in _REDO and "delete its folder" in _REDO


def test_an_image_preset_on_points_names_the_preset():
    """TR64b, SW35b: --preset mnist-conv on 2-D data said 'use --binarize none', which only led to
    the next refusal (conv needs images)."""
    from vaelab.data.pixels import resolve_binarize
    from vaelab.data.toy2d import ring
    from vaelab.presets import apply_preset

    cfg = apply_preset(RunConfig(), "mnist-conv")
    with pytest.raises(ValueError, match=r"holds points of 2 values, not images.*drop --preset"):
        resolve_binarize(cfg, ring(50, generator=torch_generator()))


def test_interrupting_the_final_evaluation_says_what_was_kept(tmp_path, monkeypatch):
    """Item 10 (crash table): Ctrl-C during `vaelab train`'s final evaluation or report exited 130
    with no message. It now says the run is complete and which commands finish the job."""
    import signal

    from vaelab.cli import commands

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(commands, "_run_eval", interrupted)
    out = tmp_path / "r"
    result = invoke("train", "--data", "ring", "--n-train", 256, "--n-test", 64, "--epochs", 1, "--hidden", "8",
                    "--device", "cpu", "--out", out)
    assert result.exit_code == 130, result.output
    assert "interrupted (SIGINT) during the final evaluation: training is complete" in result.output
    assert f"`vaelab eval {out}`" in result.output and f"`vaelab report {out}`" in result.output
    assert ckpt.load(out).model is not None


def torch_generator():
    import torch

    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("case, kwargs, message", [
    ("AP14", {"x_dim": True}, "x_dim must be an integer >= 1, got True"),
    ("AP15", {"x_dim": 2.0}, "x_dim must be an integer >= 1, got 2.0"),
    ("AP16", {"x_dim": 2, "cond_dim": -1}, "cond_dim must be an integer >= 0, got -1"),
    ("AP47", {"x_dim": 2, "cond_embed": [8]}, r"cond_embed = \[8\] embeds a condition, but cond_dim = 0"),
])
def test_build_model_refuses_sizes_that_are_not_sizes(case, kwargs, message):
    """AP14, AP15, AP16, AP47: build_model took True as 1 input, 2.0 failed deep in torch,
    cond_dim=-1 shrank the encoder, and cond_embed without a condition was silently dropped."""
    from vaelab.config import ModelConfig
    from vaelab.models import build_model

    with pytest.raises(ValueError, match=message):
        build_model(ModelConfig(), **kwargs)


def test_an_empty_element_of_a_size_list_is_refused():
    """TR84: --hidden 32,,32 was silently read as 32,32."""
    from vaelab.cli.common import _split_numbers

    with pytest.raises(ValueError, match="--hidden '32,,32' has an empty value"):
        _split_numbers("32,,32", "--hidden")
    assert _split_numbers("32, 32", "--hidden") == [32, 32]


# --------------------------------------------------------------------------- 10. round two (issue 19)

def test_a_library_warning_is_one_cli_line_never_pythons_format(tmp_path):
    """Resuming a run made by an older vaelab (no data fingerprint) printed a raw Python
    `UserWarning` (file, line and source of the warnings.warn call); the CLI shows vaelab's
    warnings as one `note:` / `warning:` line."""
    data, out = _file_run(tmp_path)
    manifest = json.loads((out / ckpt.MANIFEST_FILE).read_text())
    del manifest["files"][ckpt.DATA_FILE]
    (out / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))
    (out / ckpt.DATA_FILE).unlink()
    result = invoke("train", "--out", out, "--resume", "--epochs", 3, "--no-eval", "--no-report", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert re.search(r"^note: \S+: this run was written before vaelab recorded a fingerprint", result.output, re.M)
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output


def test_a_label_column_with_empty_labels_or_one_label_per_row(tmp_path):
    """UF48: empty label cells became a class named ""; UF49: 300 labels in 300 rows trained on,
    with only sklearn's raw 'y could represent a regression problem' warning."""
    import warnings

    from vaelab.conditions.metrics import label_classifier
    from vaelab.conditions.spec import FewRowsPerLabelWarning, fit_condition

    empty = tmp_path / "empty.csv"
    empty.write_text("x1,x2,cls\n" + "".join(f"{i * .01},{-i * .02},{'a' if i % 2 else ''}\n" for i in range(30)))
    with pytest.raises(DataFileError, match=r"15 of 30 rows have an empty label in column 'cls' \(first on line 2\)"):
        load_points(empty, label_column="cls")
    many = tmp_path / "many.csv"
    many.write_text("x1,x2,cls\n" + "".join(f"{i * .01},{-i * .02},L{i}\n" for i in range(40)))
    data = load_points(many, label_column="cls")
    with pytest.warns(FewRowsPerLabelWarning, match="40 distinct labels in 40 training rows"):
        fit_condition("label", data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        label_classifier(data)
    assert [str(w.message) for w in caught] == []
    few = tmp_path / "few.csv"  # 2 labels of 20 rows each: no warning
    few.write_text("x1,x2,cls\n" + "".join(f"{i * .01},{-i * .02},{'ab'[i % 2]}\n" for i in range(40)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_condition("label", load_points(few, label_column="cls"))


def test_a_nan_in_a_condition_column_names_the_file_column_and_line(tmp_path):
    """TR38: 'condition values must be finite numbers' named neither the file, the column nor the row."""
    path = tmp_path / "c.csv"
    x = np.random.default_rng(0).normal(size=(20, 3))
    x[5, 2] = np.nan
    np.savetxt(path, x, delimiter=",", header="x1,x2,t", comments="")
    with pytest.raises(DataFileError, match=rf"{re.escape(str(path))}: condition column 't' holds 1 NaN or infinite "
                                            r"values in float32 \(first on line 7\)"):
        load_points(path, condition_columns=["t"])


def test_relative_paths_in_a_config_file_are_taken_from_its_folder(tmp_path, monkeypatch):
    """TC12: [data] path = "rel.csv" in sub/c.toml was looked for in the current folder."""
    sub = tmp_path / "sub"
    sub.mkdir()
    _csv(sub / "rel.csv", 0)
    (sub / "d.toml").write_text('[data]\ndata_dir = "cache"\npath = "/abs/x.csv"\n')
    (sub / "c.toml").write_text('[data]\npath = "rel.csv"\n[train]\nepochs = 1\n')
    monkeypatch.chdir(tmp_path)
    assert read_toml(Path("sub") / "d.toml")["data"] == {"data_dir": str(Path("sub") / "cache"), "path": "/abs/x.csv"}
    result = invoke("train", "--config", Path("sub") / "c.toml", "--no-eval", "--no-report", "--device", "cpu",
                    "--hidden", "8", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert ckpt.load(tmp_path / "run").config.data.path == str(sub / "rel.csv")


@pytest.mark.parametrize("case, scale", [("UF24", 1e30), ("UF25", float(2**62))])
def test_data_too_large_for_float32_is_named_not_the_learning_rate(case, scale):
    """UF24, UF25: data of scale 1e30 (or int64 2^62) overflowed the loss at step 1, and the
    advice was a smaller learning rate."""
    import torch

    from vaelab import TrainConfig, fit
    from vaelab.config import ModelConfig
    from vaelab.models import build_model
    from vaelab.train import TrainingDiverged

    x = torch.randn(64, 2, generator=torch_generator()) * scale
    with pytest.raises(TrainingDiverged, match=r"The training data reach [\d.]+e\+(30|1[89]) in absolute value.*"
                                               r"standardise the data") as err:
        fit(build_model(ModelConfig(hidden=[8]), 2), x, TrainConfig(epochs=1))
    assert "--lr" not in str(err.value)


def test_edited_config_and_weights_are_compared_in_vaelabs_words(run):
    """RD02: config.json edited (latent_dim 2 -> 3, checksum updated) gave torch's load_state_dict
    error: 'size mismatch for encoder.4.weight ... torch.Size([4, 256])'."""
    import hashlib

    config = json.loads((run / ckpt.CONFIG_FILE).read_text())
    old = config["model"]["latent_dim"]
    config["model"]["latent_dim"] = old + 1
    (run / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    manifest = json.loads((run / ckpt.MANIFEST_FILE).read_text())
    manifest["files"][ckpt.CONFIG_FILE] = hashlib.sha256((run / ckpt.CONFIG_FILE).read_bytes()).hexdigest()
    (run / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))
    result = invoke("eval", run, "--k", 4, "--device", "cpu")
    assert result.exit_code == 2
    assert re.search(rf"model\.safetensors does not fit the model config\.json describes \(vae, latent_dim {old + 1},"
                     rf".*tensors have other shapes \(first: \S+ is {2 * old} x \d+ in the file, {2 * old + 2} x \d+ "
                     r"for config\.json\)", result.output), result.output
    assert "torch.Size" not in result.output and "state_dict" not in result.output


def test_a_sweep_with_a_missing_member_names_it(run, tmp_path):
    """CO14: compare of a sweep whose member folder was deleted said only 'compare needs at least
    two run directories, got 1'."""
    import warnings

    from vaelab.errors import VaelabWarning
    from vaelab.sweep.folder import SWEEP_FILE, SWEEP_FORMAT, expand_run_dirs

    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    shutil.copytree(run, sweep / "runs" / "beta=0.5")
    (sweep / SWEEP_FILE).write_text(json.dumps({"format": SWEEP_FORMAT,
                                                "members": [{"name": "beta=0.5"}, {"name": "beta=1.0"}]}))
    with pytest.warns(VaelabWarning, match=r"1 of the sweep's 2 members are not on disk \(beta=1\.0;"):
        assert expand_run_dirs([sweep]) == [sweep / "runs" / "beta=0.5"]
    shutil.copytree(run, sweep / "runs" / "beta=1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(expand_run_dirs([sweep])) == 2


def test_an_out_that_is_a_file_or_empty_is_named(tmp_path, monkeypatch):
    """SW26: sweep --out FILE said 'already exists and is not empty'; RO21: --out '' became '.',
    reported as "'.: already exists and is not empty"."""
    target = tmp_path / "file"
    target.write_bytes(OLD)
    result = invoke("sweep", "--beta", "0.5,1", "--epochs", 1, "--n-train", 64, "--device", "cpu", "--out", target)
    assert result.exit_code == 2 and f"{target}: is a file, not a folder" in result.output, result.output
    assert target.read_bytes() == OLD
    monkeypatch.chdir(tmp_path)
    for argv in (["train", "--out", ""], ["train", "--out="], ["sweep", "--beta", "1,2", "-o", ""],
                 ["sample", tmp_path, "-n", 1, "-o", ""]):
        result = invoke(*argv)
        assert result.exit_code == 2 and re.search(r"error: (--out|-o) '' is empty", result.output), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("case", ["AP07", "AP09", "AP32", "AP42", "AP52", "AP26"])
def test_python_api_mistakes_get_vaelabs_own_errors(case):
    """AP07 (meta tensor), AP09 (float64 x), AP32 (a dict as config), AP42 (epochs and steps
    both), AP52 (another model's training state), AP26 (sample(10**10)): raw torch or Python
    errors, or silence (AP42), instead of a vaelab error naming the argument."""
    import torch

    from vaelab import TrainConfig, fit
    from vaelab.config import ModelConfig
    from vaelab.errors import InputError
    from vaelab.models import build_model

    model = build_model(ModelConfig(hidden=[8]), 2)
    x = torch.randn(32, 2, generator=torch_generator())
    config = TrainConfig(epochs=1)
    if case == "AP07":
        call, says = lambda: fit(model, torch.empty(32, 2, device="meta"), config), "x is on the meta device"
    elif case == "AP09":
        call, says = lambda: fit(model, x.double(), config), r"x is float64 but the model's weights are float32"
    elif case == "AP32":
        call, says = lambda: fit(model, x, {"epochs": 1}), "fit needs a vaelab.TrainConfig as config, got dict"
    elif case == "AP42":
        call, says = lambda: TrainConfig(epochs=2, steps=3), "epochs = 2 and steps = 3 both give the training budget"
    elif case == "AP52":
        states = []
        fit(build_model(ModelConfig(hidden=[4, 4]), 2), x, config, on_checkpoint=lambda m, h, s: states.append(s))
        call, says = lambda: fit(model, x, config, state=states[-1]), "state does not fit this model"
    else:
        call, says = lambda: model.sample(10**10), r"sample\(10,000,000,000\) of this model would need about"
    with pytest.raises(InputError, match=says):
        call()
    if case == "AP42":  # one budget, and a saved steps-run's config (epochs at its default) still load
        saved = TrainConfig(steps=3).model_dump_json()
        assert TrainConfig.model_validate_json(saved).steps == 3
    if case in ("AP09", "AP32"):
        assert len(fit(model, x, config)) == 1  # the right call works


def test_a_run_dir_given_as_bytes_loads(trained_run):
    """AP50: vaelab.load(b"run") was pathlib's 'argument should be a str object ...'."""
    import vaelab

    assert vaelab.load(os.fsencode(trained_run)).config == vaelab.load(trained_run).config
    with pytest.raises(ckpt.RunDirError, match="run_dir must be a path .*got int"):
        vaelab.load(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- issue 19, still open

def test_a_free_bits_floor_the_kl_never_reached_is_said_after_training(tmp_path):
    """TR05: --free-bits 1e6 trained an unregularised autoencoder (the KL term a constant without
    a gradient) and said nothing. The KL has no bound to refuse λ against before training (it
    grows without limit as σ shrinks), so what happened is said after it: on the console and in
    the report."""
    from vaelab.config import TrainConfig
    from vaelab.settings import unreached_free_bits

    kl = [0.3, 0.8, 0.5]
    assert unreached_free_bits(TrainConfig(free_bits=1e6), kl) is not None
    assert "--beta 0" in unreached_free_bits(TrainConfig(free_bits=1.0), kl)
    assert unreached_free_bits(TrainConfig(free_bits=0.5), kl) is None  # reached in the second epoch
    assert unreached_free_bits(TrainConfig(free_bits=0.0), kl) is None
    assert unreached_free_bits(TrainConfig(free_bits=1e6), []) is None  # nothing trained: nothing to say

    out = tmp_path / "fb"
    result = invoke("train", "--epochs", 2, "--n-train", 300, "--n-test", 100, "--eval-k", 10, "--no-report",
                    "--device", "cpu", "--hidden", "16,16", "--objective", "elbo", "--free-bits", "1e6", "--out", out)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "--free-bits 1e+06 floors the KL" in said and "trained as with --beta 0" in said, result.output
    result = invoke("report", out, "--figures", "training_curves")
    assert result.exit_code == 0, result.output
    assert 'id="free-bits"' in (out / "report.html").read_text()
    # A floor the KL reached: no such warning, in either place.
    other = tmp_path / "fb2"
    result = invoke("train", "--epochs", 2, "--n-train", 300, "--n-test", 100, "--eval-k", 10, "--no-report",
                    "--device", "cpu", "--hidden", "16,16", "--objective", "elbo", "--free-bits", "1e-4", "--out",
                    other)
    assert result.exit_code == 0 and "floors the KL" not in " ".join(result.output.split()), result.output


def test_a_huge_image_size_is_refused_by_the_model_check_before_any_image_is_read(tmp_path, monkeypatch):
    """IF15: --image-size 2000 fitted the data but not the model's diversity check, which ran only
    after every image was read (14.7 s); the image size alone gives the width, so the model is
    checked before the first image is read, and the message names --image-size."""
    from PIL import Image

    import vaelab.data.folders
    import vaelab.memory

    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), color=i * 40).save(folder / f"{i}.png")

    def read(path):
        raise AssertionError(f"{path} was read before the sizes were checked")

    monkeypatch.setattr(vaelab.data.folders, "_read_image", read)
    # 3 images of 100 x 100 fit in 20 MB (120 kB); 1024 decoded samples of 10,000 pixels do not (41 MB).
    monkeypatch.setattr(vaelab.memory, "physical_memory", lambda: 20_000_000)
    config = tiny_config(data={"path": str(folder), "image_size": 100}, train={"diversity_samples": 1024})
    with pytest.raises(SizeError, match=r"10,000 values each.*--image-size"):
        train_run(config, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


def test_a_budget_given_on_top_replaces_the_one_below_it(tmp_path):
    """AP42 refuses epochs and steps given together; a budget given over a preset's or a config
    file's (`--data digits --steps 20`: the image preset sets epochs = 50) replaces it, as every
    other flag replaces the value below it (a regression of the AP42 fix, found by the families
    benchmark)."""
    from vaelab.config import ConfigError, RunConfig
    from vaelab.presets import apply_preset

    preset = apply_preset(RunConfig(), "mnist-mlp-bernoulli")
    assert preset.train.epochs != RunConfig().train.epochs
    stepped = preset.with_overrides({"train": {"steps": 20}})
    assert (stepped.train.steps, stepped.train.epochs) == (20, RunConfig().train.epochs)
    assert "train.epochs" not in stepped.user_settings()
    back = stepped.with_overrides({"train": {"epochs": 3}})
    assert (back.train.steps, back.train.epochs) == (None, 3)
    with pytest.raises(ConfigError, match="both give the training budget"):
        RunConfig().with_overrides({"train": {"steps": 20, "epochs": 3}})
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nepochs = 7\n")
    result = CliRunner().invoke(app, ["train", "--config", str(toml), "--steps", "3", "--no-eval", "--no-report",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == 3


def test_a_sweep_refused_before_any_member_trains_leaves_its_out_as_it_was(tmp_path):
    """Recount of the audit: a sweep refused while building its members (an image preset on point
    data) left sweep.json and an empty runs/ behind, so the corrected command was refused ("not
    empty") and --resume failed again."""
    out = tmp_path / "S"
    result = invoke("sweep", "--data", "ring", "--n-train", 200, "--preset", "mnist-conv", "--beta", "1,2",
                    "--out", out)
    assert result.exit_code == 2 and "not images" in result.output
    assert not out.exists()
    out.mkdir()  # an empty folder given as --out stays, empty
    assert invoke("sweep", "--data", "ring", "--n-train", 200, "--preset", "mnist-conv", "--beta", "1,2",
                  "--out", out).exit_code == 2
    assert out.is_dir() and not any(out.iterdir())
    fixed = invoke("sweep", "--data", "ring", "--n-train", 200, "--hidden", 8, "--epochs", 1, "--eval-k", 4,
                   "--beta", "1,2", "--no-report", "--out", out)
    assert fixed.exit_code == 0, fixed.output


def test_a_sweep_whose_members_all_diverge_says_so_and_fails(tmp_path):
    """Recount of the audit: a sweep where every member diverged exited 0 without a word."""
    common = ["sweep", "--data", "ring", "--n-train", 200, "--hidden", 8, "--epochs", 2, "--eval-k", 4, "--no-report"]
    every = invoke(*common, "--lr", "1e10,1e12", "--out", tmp_path / "all")
    said = " ".join(every.output.split())
    assert every.exit_code == 1 and "error: every member diverged" in said and "failure.json" in said
    some = invoke(*common, "--lr", "0.003,1e10", "--out", tmp_path / "some")
    said = " ".join(some.output.split())
    assert some.exit_code == 0 and "warning: 1 of 2 members diverged (lr=10000000000.0)" in said, said
