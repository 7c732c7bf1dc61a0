"""CLI cases of the audit that lost data or hid the real problem around run directories.

Each case names its audit ID (../shared/audits/bad-inputs-0.1.0.md). No case may print a
traceback, and a run's files must be byte-identical after a refused command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import invoke, tiny_config
from vaelab import checkpoint as ckpt
from vaelab.train import train_run


def files_of(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def run(trained_run, tmp_path):
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.mark.parametrize("case, args", [
    ("S14", ["sample", "{run}", "-n", "5", "-o", "{run}/history.csv", "--device", "cpu"]),
    ("S14b", ["sample", "{run}", "-n", "5", "-o", "{run}/state.pt", "--device", "cpu"]),
    ("N-run", ["encode", "{run}", "-i", "{pts}", "-o", "{run}/config.json", "--device", "cpu"]),
    ("D-run", ["decode", "{run}", "-i", "{pts}", "-o", "{run}/model.safetensors", "--device", "cpu"]),
    ("R01", ["report", "{run}", "--figures", "samples", "--out", "{run}/config.json"]),
    ("R01b", ["report", "{run}", "--figures", "samples", "--out", "{run}/model.safetensors"]),
])
def test_no_command_writes_over_a_runs_files(run, tmp_path, case, args):
    pts = tmp_path / "pts.csv"
    pts.write_text("a,b\n0.1,0.2\n0.3,0.4\n")
    before = files_of(run)
    result = invoke(*(a.format(run=run, pts=pts) for a in args))
    assert result.exit_code == 2, result.output
    assert "no command writes over a run's files" in result.output
    assert files_of(run) == before
    ckpt.load(run)


def test_report_out_a_folder_names_it(run, tmp_path):
    """R02: 'Is a directory: .w.nywckv4h.tmp -> w'."""
    result = invoke("report", run, "--figures", "samples", "--out", tmp_path)
    assert result.exit_code == 2
    assert f"{tmp_path}: is a folder" in result.output and "tmp'" not in result.output


@pytest.mark.parametrize("name, content", [("metrics.json", "garbage{"), ("failure.json", "{oops")])
def test_sample_and_eval_work_beside_a_broken_record(run, tmp_path, name, content):
    """E21 / E21b / E24: a corrupt metrics.json or failure.json blocked every command."""
    (run / name).write_text(content)
    assert invoke("sample", run, "-n", 3, "-o", tmp_path / "s.csv", "--device", "cpu").exit_code == 0
    result = invoke("eval", run, "--k", 2, "--device", "cpu")
    assert result.exit_code == 0, result.output


def test_report_names_a_broken_record(run):
    (run / "failure.json").write_text("{oops")
    result = invoke("report", run, "--figures", "samples")
    assert result.exit_code == 2 and "failure.json" in result.output


@pytest.mark.parametrize("case", ["T85", "T86"])
def test_resume_with_a_damaged_state_file(run, case):
    """T85 (truncated) / T86 (malicious pickle): raw tracebacks today."""
    state = run / "state.pt"
    state.write_bytes(state.read_bytes()[:1000] if case == "T85" else b"\x80\x04cos\nsystem\n.")
    result = invoke("train", "--out", run, "--resume", "--epochs", 6, "--no-eval", "--no-report", "--device", "cpu")
    assert result.exit_code == 2 and "state.pt" in result.output


def test_out_is_a_dangling_symlink(tmp_path):
    """T80: '[Errno 17] File exists'."""
    link = tmp_path / "dangle"
    link.symlink_to(tmp_path / "nowhere" / "x")
    result = invoke("train", "--data", "ring", "--epochs", 1, "--no-eval", "--no-report", "--device", "cpu",
                    "--out", link)
    assert result.exit_code == 2 and "does not exist" in result.output and "dangle" in result.output


def test_out_cannot_be_created(tmp_path):
    """T78b: '[Errno 2] No such file or directory' without context."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("train", "--data", "ring", "--epochs", 1, "--no-eval", "--no-report", "--device", "cpu",
                    "--out", blocker / "run")
    assert result.exit_code == 2 and "cannot create the run directory" in result.output


def test_a_second_train_on_the_same_out_is_refused(run):
    """Audit §4: both trainings exited 0 and the first run was silently replaced."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vaelab.checkpoint import RunLock\n"
         "RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = files_of(run)
        result = invoke("train", "--data", "ring", "--epochs", 1, "--no-eval", "--no-report", "--device", "cpu",
                        "--overwrite", "--out", run)
        assert result.exit_code == 2 and "another vaelab process" in result.output
        assert files_of(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_eval_during_training_does_not_stay_as_the_result(tmp_path):
    """Audit §4: with --no-eval, a mid-training metrics.json stayed in the finished run."""
    out = tmp_path / "r"
    train_run(tiny_config(train={"epochs": 2}), out)
    assert invoke("eval", out, "--k", 2, "--device", "cpu").exit_code == 0  # 'during' training
    assert invoke("train", "--out", out, "--resume", "--epochs", 4, "--no-eval", "--no-report",
                  "--device", "cpu").exit_code == 0
    assert ckpt.load(out).metrics == {}


def _immutable(path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    probe = path / "probe"
    try:
        probe.write_text("x")
    except OSError:
        return True
    probe.unlink()
    subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    return False


@pytest.fixture
def readonly_run(run):
    if not _immutable(run):
        pytest.skip("needs a folder this user cannot write (chattr +i)")
    yield run
    subprocess.run(["chattr", "-i", str(run)], capture_output=True)


def test_resume_in_an_unwritable_folder_fails_before_training(readonly_run):
    """T78d: the whole budget was trained, then the first checkpoint failed naming a temp file."""
    steps = []
    with pytest.raises(ckpt.WriteError, match=f"{readonly_run}: cannot write in the run directory") as err:
        train_run(tiny_config(train={"epochs": 8}), readonly_run, resume=True, on_step=steps.append)
    assert steps == [] and ckpt._TMP_SUFFIX not in str(err.value)


def test_eval_in_an_unwritable_folder_prints_the_metrics_then_names_the_file(readonly_run):
    """E34: computed, then failed on '.metrics.json.pzquk6hc.tmp' and printed nothing."""
    result = invoke("eval", readonly_run, "--k", 2, "--device", "cpu")
    assert result.exit_code == 2
    assert "IWAE NLL" in result.output and f"{readonly_run / 'metrics.json'}: cannot write" in result.output
