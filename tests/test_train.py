import json
import math

import pytest
import torch

from helpers import tiny_config
from vaelab import checkpoint as ckpt
from vaelab.data.registry import load_dataset
from vaelab.history import History
from vaelab.models import build_model
from vaelab.train import TrainingDiverged, fit, train_run


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_history_columns_and_decreasing_loss(tiny_cfg):
    cfg = tiny_config(train={"epochs": 15, "objective": "elbo"})
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, 2, seed=0)
    hist = fit(model, data.x, cfg.train)
    assert len(hist) == 15
    assert list(hist.rows[0]) == list(History.COLUMNS)
    assert hist.column("step")[-1] == 15 * 4
    assert hist.column("loss")[-1] < hist.column("loss")[0]
    for r in hist.rows:
        assert math.isclose(r["loss"], r["recon"] + r["kl"], rel_tol=1e-5)
        assert r["diversity"] > 0
    secs = hist.column("seconds")
    assert all(b >= a for a, b in zip(secs, secs[1:], strict=False))


def test_same_seed_bit_identical_weights(tiny_cfg):
    data = load_dataset(tiny_cfg.data)
    runs = []
    for seed in (0, 0, 1):
        cfg = tiny_cfg.train.model_copy(update={"seed": seed})
        model = build_model(tiny_cfg.model, 2, seed=seed)
        fit(model, data.x, cfg)
        runs.append(_weights(model))
    assert _equal(runs[0], runs[1])
    assert not _equal(runs[0], runs[2])


def test_step_budget_replaces_epochs(tiny_cfg):
    data = load_dataset(tiny_cfg.data)
    model = build_model(tiny_cfg.model, 2, seed=0)
    hist = fit(model, data.x, tiny_cfg.train.model_copy(update={"steps": 10, "epochs": 100}))
    assert hist.column("step")[-1] == 10
    assert len(hist) == 3  # 4 + 4 + 2 steps


class Interrupted(Exception):
    """Stands in for a killed process in the middle of training."""


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_interruption_is_exact(tmp_path, objective, schedule):
    k = {"k": 3} if objective == "iwae" else {}  # k with the ELBO is refused (it would change nothing)
    cfg = tiny_config(train={"epochs": 4, "objective": objective, "lr_schedule": schedule, **k})
    a = train_run(cfg, tmp_path / "a")

    def kill(info):
        if info.step == 10:  # mid epoch 3; the last checkpoint is the end of epoch 2
            raise Interrupted

    with pytest.raises(Interrupted):
        train_run(cfg, tmp_path / "b", on_step=kill)
    assert ckpt.load_state(tmp_path / "b").epoch == 2
    b = train_run(cfg, tmp_path / "b", resume=True)
    assert _equal(a.model.state_dict(), b.model.state_dict())
    assert [r["loss"] for r in a.history.rows] == [r["loss"] for r in b.history.rows]
    assert ckpt.load_state(tmp_path / "b").complete


def test_resume_with_a_larger_budget_continues_training(tmp_path):
    half = tiny_config(train={"epochs": 2, "lr_schedule": "constant"})
    full = tiny_config(train={"epochs": 4, "lr_schedule": "constant"})
    a = train_run(full, tmp_path / "a")
    train_run(half, tmp_path / "b")
    b = train_run(full, tmp_path / "b", resume=True)
    # with a constant learning rate the 2-epoch run is exactly the first half of the 4-epoch one
    assert _equal(a.model.state_dict(), b.model.state_dict())
    assert len(b.history) == 4


def test_run_directory_contents(tmp_path, tiny_cfg):
    run = train_run(tiny_cfg, tmp_path / "r")
    for f in ("config.json", "model.safetensors", "state.pt", "history.csv"):
        assert (tmp_path / "r" / f).is_file()
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["latent_dim"] == 2
    assert len(run.history) == 3
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_refuses_to_overwrite_a_run(tmp_path, tiny_cfg):
    train_run(tiny_cfg, tmp_path / "r")
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(ckpt.RunDirError, match="already exists"):
        train_run(tiny_cfg, tmp_path / "r")
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    train_run(tiny_cfg, tmp_path / "r", overwrite=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(train={"epochs": 5, "checkpoint_every": 1})
    saved = {}

    def poison(info):
        # after epoch 2 (8 steps) was checkpointed, corrupt the weights in memory
        if info.step == 9:
            saved["weights"] = (tmp_path / "r" / "model.safetensors").read_bytes()
            run_model = poison.model
            with torch.no_grad():
                next(run_model.parameters()).fill_(float("nan"))

    import vaelab.train.run as train_mod  # train_run calls the fit it imported

    original_fit = train_mod.fit

    def spy_fit(model, *args, **kwargs):
        poison.model = model
        return original_fit(model, *args, **kwargs)

    train_mod.fit = spy_fit
    try:
        with pytest.raises(TrainingDiverged, match=r"at step 10 \(epoch 3\)"):
            train_run(cfg, tmp_path / "r", on_step=poison)
    finally:
        train_mod.fit = original_fit
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == saved["weights"]
    failure = json.loads((tmp_path / "r" / "failure.json").read_text())
    assert failure["step"] == 10
    run = ckpt.load(tmp_path / "r")
    assert run.history.has_failure() and len(run.history) == 3
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert ckpt.load_state(tmp_path / "r").epoch == 2


def test_ae_trains_and_reports_no_kl(tmp_path):
    run = train_run(tiny_config(model={"kind": "ae"}), tmp_path / "ae")
    assert all(r["kl"] == 0.0 for r in run.history.rows)


def test_overwrite_replaces_the_whole_run_but_keeps_user_files(tmp_path):
    out = tmp_path / "r"
    train_run(tiny_config(data={"condition": "label"}), out)
    (out / "figures").mkdir()
    (out / "figures" / "samples.png").write_bytes(b"old")
    (out / "report.html").write_text("old report")
    (out / "notes.txt").write_text("mine")
    assert (out / "condition.json").is_file()
    run = train_run(tiny_config(), out, overwrite=True)  # unconditional this time
    assert run.condition is None and run.model.cond_dim == 0
    assert not (out / "condition.json").exists()
    assert not (out / "figures").exists() and not (out / "report.html").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert ckpt.load(out).model.cond_dim == 0
