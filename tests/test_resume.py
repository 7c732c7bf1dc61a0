"""`vaelab train --out RUN --resume`: the run's own budget and config unless told otherwise (issue 8 item 2)."""

from __future__ import annotations

import json

import pytest

from helpers import invoke
from vaelab import checkpoint as ckpt
from vaelab.config import ConfigError, RunConfig
from vaelab.presets import apply_preset
from vaelab.train import train_run

TINY = ["--data", "ring", "--n-train", "128", "--n-test", "64", "--hidden", "8", "--batch-size", "64",
        "--eval-k", "4", "--device", "cpu", "--no-report", "--no-eval"]


class Interrupted(Exception):
    """Stands in for a killed process."""


@pytest.fixture
def done_run(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--epochs", 3, "--checkpoint-every", 1, "--out", out).exit_code == 0
    return out


def test_resume_without_budget_keeps_the_run_and_its_config(done_run):
    before = (done_run / "config.json").read_bytes()
    result = invoke("train", "--out", done_run, "--resume", "--device", "cpu", "--no-eval", "--no-report")
    assert result.exit_code == 0, result.output
    assert "done: 3 epochs, 6 steps" in result.output
    assert (done_run / "config.json").read_bytes() == before


def test_resume_with_a_larger_budget_extends_it_and_records_it(done_run):
    result = invoke("train", "--out", done_run, "--resume", "--epochs", 5, "--lr", 1e-4, "--device", "cpu",
                    "--no-eval", "--no-report")
    assert result.exit_code == 0, result.output
    cfg = json.loads((done_run / "config.json").read_text())
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["lr"] == 1e-4
    assert ckpt.load_state(done_run).step == 10


def test_resume_with_a_smaller_budget_is_refused(done_run):
    before = (done_run / "config.json").read_bytes()
    result = invoke("train", "--out", done_run, "--resume", "--epochs", 2, "--device", "cpu")
    assert result.exit_code == 2
    assert "never shortened" in result.output and "--epochs 3" in result.output
    assert (done_run / "config.json").read_bytes() == before


@pytest.mark.parametrize("flag,value", [("--data", "moons"), ("--latent-dim", "7"), ("--hidden", "16"),
                                        ("--objective", "elbo"), ("--seed", "4"), ("--n-train", "300")])
def test_settings_that_cannot_change_are_refused_by_name(done_run, flag, value):
    """Audit T87: --lr, --data, --latent-dim ... were silently ignored on resume."""
    before = (done_run / "model.safetensors").read_bytes()
    result = invoke("train", "--out", done_run, "--resume", flag, value, "--device", "cpu")
    assert result.exit_code == 2
    assert f"({flag})" in result.output and "cannot change" in result.output
    assert (done_run / "model.safetensors").read_bytes() == before


def test_repeating_the_original_flags_is_allowed(done_run):
    result = invoke("train", *TINY, "--epochs", 3, "--out", done_run, "--resume")
    assert result.exit_code == 0, result.output


def test_resume_with_overwrite_is_refused(done_run):
    """Audit T90: --overwrite was silently ignored with --resume."""
    before = (done_run / "history.csv").read_bytes()
    result = invoke("train", "--out", done_run, "--resume", "--overwrite", "--device", "cpu")
    assert result.exit_code == 2 and "give only one" in result.output
    assert (done_run / "history.csv").read_bytes() == before
    with pytest.raises(ConfigError):
        train_run(RunConfig(), done_run, resume=True, overwrite=True)


def test_interrupted_preset_run_keeps_its_50_epochs(tmp_path):
    """A preset pins 50 epochs; `--resume` without --epochs used to re-budget it to 400."""
    cfg = apply_preset(RunConfig(), "mnist-mlp-gaussian").with_overrides({
        "data": {"name": "ring", "n_train": 64, "n_test": 32, "binarize": "none"},
        "model": {"hidden": [4], "latent_dim": 2}, "train": {"batch_size": 64, "diversity_samples": 8},
    })
    assert cfg.train.epochs == 50

    def kill(info):
        if info.step == 25:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_run(cfg, tmp_path / "r", on_step=kill)
    result = invoke("train", "--out", tmp_path / "r", "--resume", "--device", "cpu", "--no-eval", "--no-report")
    assert result.exit_code == 0, result.output
    assert "done: 50 epochs, 50 steps" in result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["epochs"] == 50


def test_resume_with_config_or_preset_is_refused(done_run, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nepochs = 9\n")
    result = invoke("train", "--out", done_run, "--resume", "--config", toml, "--device", "cpu")
    assert result.exit_code == 2 and "--config" in result.output


def test_T78d_resume_in_an_unwritable_folder_fails_before_training(done_run, monkeypatch):
    import tempfile as tf

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tf, "TemporaryFile", refuse)  # what an immutable / read-only folder does
    steps = []
    with pytest.raises(ckpt.RunDirError, match="cannot write in the run directory"):
        train_run(RunConfig().with_overrides({"train": {"epochs": 8}}), done_run, resume=True,
                  on_step=lambda info: steps.append(info.step))
    assert steps == []  # nothing was trained for nothing
