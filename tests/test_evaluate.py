import math

import pytest

from helpers import tiny_config
from vaelab import checkpoint as ckpt
from vaelab.data.registry import load_dataset
from vaelab.evaluate import evaluate
from vaelab.train import train_run


def test_metrics_are_consistent(trained_run):
    run = ckpt.load(trained_run)
    test = load_dataset(run.config.data, "test")
    m = evaluate(run.model, test, k=50, seed=0)
    assert m["n"] == len(test)
    assert math.isclose(m["elbo"], -(m["recon"] + m["kl"]), rel_tol=1e-9)
    assert math.isclose(sum(m["kl_per_dim"]), m["kl"], rel_tol=1e-6)
    assert len(m["kl_per_dim"]) == 2 and 0 <= m["active_units"] <= 2
    # IWAE NLL is a tighter bound than -ELBO (up to Monte Carlo noise)
    assert m["iwae_nll"] <= -m["elbo"] + 3 * m["iwae_nll_se"]
    # ring has an exact density: the paired gap is reported and consistent
    assert math.isclose(m["nll_gap"], m["iwae_nll"] - m["true_nll"], rel_tol=1e-9, abs_tol=1e-9)
    assert m["true_nll"] == pytest.approx(-float(test.log_prob(test.x).double().mean()), rel=1e-9)


def test_evaluation_is_reproducible(trained_run):
    run = ckpt.load(trained_run)
    test = load_dataset(run.config.data, "test")
    assert evaluate(run.model, test, k=20, seed=1) == evaluate(run.model, test, k=20, seed=1)


def test_no_true_density_for_moons(tmp_path):
    run = train_run(tiny_config(data={"name": "moons"}), tmp_path / "m")
    m = evaluate(run.model, load_dataset(run.config.data, "test"), k=10)
    assert "nll_gap" not in m and "iwae_nll" in m


def test_autoencoder_reports_reconstruction_only(tmp_path):
    run = train_run(tiny_config(model={"kind": "ae"}), tmp_path / "ae")
    m = evaluate(run.model, load_dataset(run.config.data, "test"), k=10)
    assert set(m) == {"n", "recon"}
