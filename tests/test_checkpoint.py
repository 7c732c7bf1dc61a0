"""The run directory as one unit: crash safety, integrity, locking, ownership, file modes.

Audit cases (../shared/audits/bad-inputs-0.1.0.md) are named where a test covers one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import threading
import warnings

import pytest
import torch

from helpers import tiny_config
from vaelab import checkpoint as ckpt
from vaelab.models import build_model
from vaelab.train import train_run


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _copy(run, dst):
    shutil.copytree(run, dst)
    return dst


def _drop_manifest(run):
    """Make a run look like one written before manifests (vaelab 0.1.0: no checksums, no
    ownership marker, no data fingerprint): the load-time checks that do not rely on checksums
    must still hold. (A run that has the marker or data.json but lost its manifest is refused:
    see test_bad_inputs_02.)"""
    (run / ckpt.MANIFEST_FILE).unlink()
    (run / ckpt.MARKER_FILE).unlink(missing_ok=True)
    (run / ckpt.DATA_FILE).unlink(missing_ok=True)
    return run


# --------------------------------------------------------------------------- one unit


class Crash(BaseException):
    """Stands in for the process dying at one point of a checkpoint write."""


def _train_with_crash(monkeypatch, cfg, out, at):
    """Train ``cfg`` into ``out`` and die before the ``at``-th file operation of the third
    checkpoint (initial save, epoch 1, epoch 2 -> inside the epoch-2 commit). Returns True when
    it crashed (False: ``at`` is past the last operation, training finished)."""
    counts = {"commit": 0, "op": 0}
    journal = ckpt.journal  # where a checkpoint is committed: its own names are the ones to patch
    real_commit = journal._commit

    def commit(*args, **kwargs):
        counts["commit"] += 1
        return real_commit(*args, **kwargs)

    def point(fn):
        def wrapped(*args, **kwargs):
            if counts["commit"] == 3:
                if counts["op"] == at:
                    raise Crash
                counts["op"] += 1
            return fn(*args, **kwargs)
        return wrapped

    with monkeypatch.context() as m:
        m.setattr(journal, "_commit", commit)
        m.setattr(journal, "_write_new", point(journal._write_new))
        for name in ("replace", "rename", "rmdir"):
            m.setattr(journal.os, name, point(getattr(os, name)))
        try:
            train_run(cfg, out)
        except Crash:
            return True
    return False


def test_a_crash_at_any_point_of_a_checkpoint_write_leaves_step_n_or_n_minus_1(tmp_path, monkeypatch):
    """Item 6 / audit §2: kill between every pair of file operations of one checkpoint; load
    gives all files of one step, and resume equals the uninterrupted run."""
    def cfg(epochs):
        return tiny_config(train={"epochs": epochs, "lr_schedule": "constant", "checkpoint_every": 1})

    # with a constant learning rate, a shorter run is exactly the start of a longer one
    ref = {e: train_run(cfg(e), tmp_path / f"ref{e}").model.state_dict() for e in (1, 2, 4)}
    outcomes = set()
    at = 0
    while _train_with_crash(monkeypatch, cfg(4), tmp_path / f"crash{at}", at):
        out = tmp_path / f"crash{at}"
        run, state = ckpt.load(out), ckpt.load_state(out)
        assert state.step in (4, 8), at  # epoch 1 (N-1) or epoch 2 (N): 4 steps per epoch
        epoch = state.step // 4
        outcomes.add(epoch)
        assert _equal(run.model.state_dict(), ref[epoch]), at
        assert len(run.history) == epoch and run.step == state.step, at
        resumed = train_run(cfg(4), out, resume=True)
        assert _equal(resumed.model.state_dict(), ref[4]), at
        assert not (out / ckpt.STAGING_DIR).exists() and not (out / ckpt.COMMITTED_DIR).exists()
        assert not list(out.glob(".*tmp"))
        at += 1
    assert at >= 10  # every file write, the commit rename and every move into place were hit
    assert outcomes == {1, 2}  # crashes before the commit keep step N-1, after it give step N


def test_a_reader_never_sees_a_half_written_checkpoint(tmp_path):
    """Audit §4: a loader running beside a writer that alternates two different models always
    gets a whole checkpoint of one of them (the audit saw 1.4 % 'weights do not match')."""
    out = tmp_path / "r"
    cfgs = [tiny_config(model={"latent_dim": d}) for d in (2, 3)]
    models = [build_model(c.model, 2, seed=0) for c in cfgs]
    ckpt.save(out, models[0], cfgs[0])
    stop = threading.Event()
    written = []

    def writer():
        with ckpt.RunLock(out):
            i = 0
            while not stop.is_set():
                ckpt.write_checkpoint(out, models[i % 2], cfgs[i % 2])
                written.append(i)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = set()
        for _ in range(150):
            run = ckpt.load(out)
            d = run.model.latent_dim
            assert run.config.model.latent_dim == d
            assert _equal(run.model.state_dict(), models[d - 2].state_dict())
            seen.add(d)
    finally:
        stop.set()
        thread.join()
    assert len(written) > 10


def test_load_leaves_the_global_rng_alone(trained_run):
    """Item 6 / 13: building the model to load into must not draw from torch's global RNG."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    ckpt.load(trained_run)
    assert torch.equal(torch.get_rng_state(), before)


def test_identical_weights_give_identical_files(tmp_path):
    """Audit §2: two bit-identical models / runs write byte-identical model.safetensors."""
    cfg = tiny_config()
    model = build_model(cfg.model, 2, seed=0)
    blobs = set()
    for i in range(6):
        ckpt.save(tmp_path / f"s{i}", model, cfg)
        blobs.add((tmp_path / f"s{i}" / ckpt.WEIGHTS_FILE).read_bytes())
    assert len(blobs) == 1
    a, b = (train_run(cfg, tmp_path / n).path / ckpt.WEIGHTS_FILE for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    # still a valid safetensors file that loads to the same tensors
    assert _equal(ckpt.load(tmp_path / "s0").model.state_dict(), model.state_dict())


# --------------------------------------------------------------------------- integrity


def _flip(path, offset_from_end=64, value=b"\x7f\x7f\x7f\x7f"):
    data = bytearray(path.read_bytes())
    data[-offset_from_end:-offset_from_end + len(value)] = value
    path.write_bytes(bytes(data))


def test_tampered_weights_are_named(trained_run, tmp_path):
    """E13: 4 changed bytes of the weights load silently today; the checksum names the file."""
    run = _copy(trained_run, tmp_path / "r")
    _flip(run / ckpt.WEIGHTS_FILE)
    with pytest.raises(ckpt.IntegrityError, match=r"model\.safetensors.*sha256"):
        ckpt.load(run)


def test_non_finite_weights_are_refused_even_without_a_checksum(trained_run, tmp_path):
    """E13b / C10: NaN bytes in the weights: refused on load, naming the file and the tensor."""
    run = _drop_manifest(_copy(trained_run, tmp_path / "r"))
    _flip(run / ckpt.WEIGHTS_FILE, value=b"\x00\x00\xc0\x7f")  # a float32 NaN
    with pytest.raises(ckpt.IntegrityError, match=r"model\.safetensors: 1 tensor\(s\) hold NaN"):
        ckpt.load(run)


def test_edited_config_with_the_same_shapes_is_refused(trained_run, tmp_path):
    """E20: activation edited tanh -> relu would load as a different model."""
    run = _copy(trained_run, tmp_path / "r")
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["activation"] = "relu" if cfg["model"]["activation"] != "relu" else "tanh"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.IntegrityError, match=r"config\.json: changed since the weights were saved"):
        ckpt.load(run)


@pytest.mark.parametrize("case", ["truncated", "malicious", "not_a_dict"])
def test_a_damaged_state_file_gives_a_clear_error(trained_run, tmp_path, case, monkeypatch):
    """T85 / T86: truncated, malicious (never executed) or foreign state.pt: a RunDirError
    naming the file, both with and without the checksum; the model itself still loads."""
    monkeypatch.chdir(tmp_path)
    for with_manifest in (True, False):
        run = _copy(trained_run, tmp_path / f"r{with_manifest}")
        if not with_manifest:
            _drop_manifest(run)
        state = run / ckpt.STATE_FILE
        if case == "truncated":
            state.write_bytes(state.read_bytes()[:1000])
        elif case == "malicious":
            class Evil:
                def __reduce__(self):
                    return (os.system, ("touch PWNED",))
            state.write_bytes(pickle.dumps(Evil()))
        else:
            import io
            buf = io.BytesIO()
            torch.save([1, 2, 3], buf)
            state.write_bytes(buf.getvalue())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's pickle-protocol warning is not passed on
            with pytest.raises(ckpt.RunDirError, match=r"state\.pt") as err:
                ckpt.load_state(run)
        # torch's advice to load with weights_only=False would run the file's code: never repeated
        assert "weights_only" not in str(err.value)
        ckpt.load(run)  # the model is unaffected
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name, content, what", [
    ("metrics.json", "garbage{", "metrics"),             # E21 / E21b
    ("failure.json", "{oops", "failure"),                 # E24
    ("history.csv", "epoch,step,loss\n1,4,3.0\n", "history"),                 # E23: missing columns
    ("history.csv", None, "history"),                     # E23b: binary garbage
])
def test_a_broken_auxiliary_file_never_blocks_the_model(trained_run, tmp_path, name, content, what):
    """A corrupt metrics.json / history.csv / failure.json: the model loads and samples; the
    record that needs the file raises an error naming it."""
    run_dir = _drop_manifest(_copy(trained_run, tmp_path / "r")) if name == "history.csv" else \
        _copy(trained_run, tmp_path / "r")
    (run_dir / name).write_bytes(bytes(range(128, 256)) * 4 if content is None else content.encode())
    run = ckpt.load(run_dir)
    assert run.model.sample(3).shape == (3, 2)
    with pytest.raises(ckpt.RunDirError, match=rf"{name}: "):
        getattr(run, what)


def test_corrupt_history_value_names_the_file_and_line(trained_run, tmp_path):
    """E22 / R06: 'could not convert string to float' without a file name today."""
    run_dir = _drop_manifest(_copy(trained_run, tmp_path / "r"))
    lines = (run_dir / "history.csv").read_text().splitlines()
    lines[2] = "2,4,abc," + ",".join(lines[2].split(",")[3:])
    (run_dir / "history.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ckpt.RunDirError, match=r"history\.csv: cannot read the training history \(line 3"):
        _ = ckpt.load(run_dir).history


@pytest.mark.parametrize("meta, message", [({"x_dim": None}, "x_dim=None"), ({"x_dim": "two"}, "x_dim='two'")])
def test_bad_weights_metadata_names_the_file(trained_run, tmp_path, meta, message):
    """E14 / E14b: 'error: x_dim' and a bare int() error today."""
    from safetensors.torch import load_file, save_file

    run = _drop_manifest(_copy(trained_run, tmp_path / "r"))
    path = run / ckpt.WEIGHTS_FILE
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as fh:
        header = dict(fh.metadata())
    header.update({k: v for k, v in meta.items() if v is not None})
    for k, v in meta.items():
        if v is None:
            header.pop(k)
    save_file(load_file(str(path)), str(path), metadata=header)
    with pytest.raises(ckpt.RunDirError, match=rf"model\.safetensors: the header records {message}"):
        ckpt.load(run)


# --------------------------------------------------------------------------- ownership, overwrite, save


def test_overwrite_with_bad_data_keeps_the_old_run(trained_run, tmp_path):
    """T88: the old run was deleted before the new data was read."""
    run = _copy(trained_run, tmp_path / "r")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    bad = tmp_path / "nan.csv"
    bad.write_text("a,b\nnan,1\n2,3\n")
    with pytest.raises(ValueError, match="nan.csv"):
        train_run(tiny_config(data={"name": "ring", "path": str(bad)}), run, overwrite=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    ckpt.load(run)


def test_overwrite_with_an_impossible_model_keeps_the_old_run(trained_run, tmp_path, monkeypatch):
    """T88b: the model is built before anything is removed (here its construction fails)."""
    import vaelab.train.run as train_mod  # the run preparation builds the model

    run = _copy(trained_run, tmp_path / "r")
    before = (run / ckpt.WEIGHTS_FILE).read_bytes()

    def impossible(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(train_mod, "build_model", impossible)
    with pytest.raises(RuntimeError, match="allocate"):
        train_run(tiny_config(model={"latent_dim": 7}), run, overwrite=True)
    assert (run / ckpt.WEIGHTS_FILE).read_bytes() == before
    assert ckpt.load(run).model.latent_dim == 2


def test_overwrite_refuses_a_folder_vaelab_did_not_make(tmp_path):
    """T89: --overwrite on a project folder deleted the user's config.json and figures/."""
    folder = tmp_path / "project"
    (folder / "figures").mkdir(parents=True)
    (folder / "figures" / "fig1.png").write_text("mine")
    (folder / "config.json").write_text('{"mine": 1}')
    with pytest.raises(ckpt.RunDirError, match=r"not made by vaelab \(no \.vaelab-run marker\)"):
        train_run(tiny_config(), folder, overwrite=True)
    assert (folder / "figures" / "fig1.png").read_text() == "mine"
    assert (folder / "config.json").read_text() == '{"mine": 1}'


def test_every_run_carries_the_ownership_marker(trained_run):
    assert ckpt.is_owned(trained_run)


def test_save_refuses_an_existing_run_unless_told(trained_run, tmp_path):
    """A49: vaelab.save() into a run replaced its weights and left the old state/history beside them."""
    run = _copy(trained_run, tmp_path / "r")
    cfg = tiny_config(model={"latent_dim": 3})
    model = build_model(cfg.model, 2, seed=1)
    with pytest.raises(ckpt.RunDirError, match="already exists"):
        ckpt.save(run, model, cfg)
    assert ckpt.load(run).model.latent_dim == 2
    ckpt.save(run, model, cfg, overwrite=True)
    assert ckpt.load(run).model.latent_dim == 3
    for stale in (ckpt.STATE_FILE, ckpt.HISTORY_FILE, ckpt.METRICS_FILE):
        assert not (run / stale).exists(), stale


# --------------------------------------------------------------------------- lock


LOCK_HOLDER = """
import sys, time
from vaelab.checkpoint import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_training_is_refused_and_a_killed_holder_is_taken_over(trained_run, tmp_path):
    """Audit §4: two trainings on one --out both succeeded, the first silently replaced."""
    run = _copy(trained_run, tmp_path / "r")
    before = (run / ckpt.WEIGHTS_FILE).read_bytes()
    proc = _hold_lock(run)
    try:
        with pytest.raises(ckpt.RunLockedError, match="another vaelab process"):
            train_run(tiny_config(), run, overwrite=True)
        with pytest.raises(ckpt.RunLockedError, match=rf"pid {proc.pid}"):
            train_run(tiny_config(), run, resume=True)
        assert (run / ckpt.WEIGHTS_FILE).read_bytes() == before
        ckpt.load(run)  # readers are not blocked
    finally:
        proc.kill()  # SIGKILL: the lock file stays, with the dead process's pid in it
        proc.wait()
    assert (run / ckpt.LOCK_FILE).exists()
    train_run(tiny_config(train={"epochs": 6}), run, resume=True)  # the stale lock is taken over


# --------------------------------------------------------------------------- metrics of another checkpoint


def test_metrics_of_another_checkpoint_are_not_the_runs_result(tmp_path):
    """Audit §4: an eval during training left its metrics.json in the finished run."""
    from vaelab.data.registry import load_dataset
    from vaelab.evaluate import evaluate

    cfg = tiny_config(train={"epochs": 2})
    out = tmp_path / "r"
    train_run(cfg, out)
    mid = ckpt.load(out)
    metrics = evaluate(mid.model, load_dataset(cfg.data, "test"), k=4)
    ckpt.write_metrics(mid, metrics)
    assert ckpt.load(out).metrics["iwae_k"] == 4  # the metrics of this checkpoint are shown
    train_run(tiny_config(train={"epochs": 4}), out, resume=True)
    assert ckpt.load(out).metrics == {}  # ... but not as the result of the trained-on model
    assert not (out / ckpt.METRICS_FILE).exists()
    # metrics of another checkpoint are ignored on load, even when nobody removed them
    ckpt.write_json(out / ckpt.METRICS_FILE, {"iwae_k": 4, "checkpoint": {"step": 1, "model_sha256": "0" * 64}})
    assert ckpt.load(out).metrics == {}
    # untagged metrics (written by hand, or by an older vaelab) cannot be told apart: shown
    ckpt.write_json(out / ckpt.METRICS_FILE, {"iwae_k": 4})
    assert ckpt.load(out).metrics == {"iwae_k": 4}


# --------------------------------------------------------------------------- file modes, paths


def test_run_files_follow_the_umask(tmp_path):
    """Audit §5: every run file was 0600 (tempfile's mode)."""
    old = os.umask(0o002)
    try:
        out = tmp_path / "r"
        train_run(tiny_config(), out)
    finally:
        os.umask(old)
    for path in out.iterdir():
        if path.is_file() and path.name != ckpt.LOCK_FILE:
            assert stat.S_IMODE(path.stat().st_mode) == 0o664, path.name


@pytest.mark.parametrize("name", ["history.csv", "config.json", "model.safetensors", "checkpoint.json",
                                  "figures/samples.png", ".vaelab-run"])
def test_output_paths_inside_a_run_are_refused(trained_run, name):
    """S14 / R01 / R01b: outputs over a run's own files."""
    with pytest.raises(ckpt.RunDirError, match="no command writes over a run's files"):
        ckpt.check_output_path(trained_run / name)
    ckpt.check_output_path(trained_run / "samples.csv")  # a new file in the run folder is fine
    ckpt.check_output_path(trained_run / "report.html", allow=("report.html",))


def test_write_errors_name_the_file_not_a_temporary_one(tmp_path):
    """R03 / T78d / E34: errors named '.config.json.8m6nx99t.tmp'."""
    target = tmp_path / "file-not-folder"
    target.write_text("x")
    with pytest.raises(ckpt.WriteError) as err:
        ckpt.atomic_write_text(target / "out.html", "x")
    assert str(err.value).startswith(f"{target / 'out.html'}: cannot write") and ckpt._TMP_SUFFIX not in str(err.value)
