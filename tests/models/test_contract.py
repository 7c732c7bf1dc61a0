"""The contract every model class passes (adding a family adds it to CASES).

The checks themselves are public, in ``vaelab.testing`` (a family written outside vaelab runs
them with ``check_family``): shapes; save -> load gives identical outputs; the same generator
gives the same output; gradients flow through ``rsample``; ``kl`` is the closed form where one
exists and the Monte Carlo estimate converges to the KL; IWAE with k = 1 equals the ELBO in
expectation; ``sample()`` draws from ``prior()``; a short training run improves the bound. Here
they run over every built-in family and the test-only families (tests/models/families.py),
registered at runtime, which then also train, evaluate, save, load and draw their figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from models.families import CouplingFlowVAE, MixturePriorVAE
from vaelab import checkpoint as ckpt
from vaelab import testing
from vaelab.config import RunConfig
from vaelab.models import FAMILIES, VAE, register_family
from vaelab.testing import Case

TEST_FAMILIES = {"flowvae": CouplingFlowVAE, "mogvae": MixturePriorVAE}


@pytest.fixture(scope="module", autouse=True)
def test_families() -> Iterator[None]:
    """Register the test-only families for this module, and take them out again after it."""
    for name, cls in TEST_FAMILIES.items():
        register_family(name, cls)
    yield
    for name in TEST_FAMILIES:
        FAMILIES.pop(name, None)


CONV = {"net": "conv", "channels": [2, 4], "latent_dim": 3, "likelihood": "bernoulli"}
CASES = [
    Case("vae", {"latent_dim": 2}, id="vae-mlp"),
    Case("vae", CONV, x_dim=64, data={"name": "digits"}, id="vae-conv"),
    Case("ae", {"latent_dim": 2}, id="ae"),
    Case("vae", {"latent_dim": 2}, cond_dim=8, id="vae-conditional"),
    Case("flowvae", {"latent_dim": 2}, id="flow"),
    Case("mogvae", {"latent_dim": 2}, id="mixture-prior"),
    Case("planar", {"latent_dim": 2}, id="planar"),
    Case("radial", {"latent_dim": 2}, cond_dim=8, id="radial-conditional"),
    Case("iaf", CONV, x_dim=64, data={"name": "digits"}, id="iaf-conv"),
    Case("ladder", {"latent_dim": 3}, id="ladder"),
    Case("vamp", {"latent_dim": 2}, id="vamp"),
    Case("vamp", {**CONV, "vamp": {"components": 7}}, x_dim=64, data={"name": "digits"}, id="vamp-conv"),
    Case("mog", {"latent_dim": 2}, id="mog"),
    Case("mog", {"latent_dim": 3, "mog": {"components": 4}}, cond_dim=8, id="mog-conditional"),
    Case("gumbel", {"latent_dim": 8}, id="gumbel"),
    Case("gumbel", {"latent_dim": 6, "gumbel": {"groups": 2, "straight_through": True}}, cond_dim=8,
         id="gumbel-st-conditional"),
    Case("gumbel", {**CONV, "latent_dim": 12, "gumbel": {"groups": 3}}, x_dim=64, data={"name": "digits"},
         id="gumbel-conv"),
]
VARIATIONAL = [c for c in CASES if c.kind != "ae"]


def _ids(case: Case) -> str:
    return case.id


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_shapes(case):
    testing.check_shapes(case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_save_load_gives_identical_outputs(case, tmp_path):
    testing.check_save_load(case, tmp_path)
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_same_generator_same_output_and_another_differs(case):
    testing.check_generator(case)


@pytest.mark.parametrize("case", VARIATIONAL, ids=_ids)
def test_gradients_flow_through_rsample(case):
    testing.check_rsample_gradients(case)


@pytest.mark.parametrize("case", VARIATIONAL, ids=_ids)
def test_kl_is_the_closed_form_or_a_converging_monte_carlo_estimate(case):
    testing.check_kl(case)


@pytest.mark.parametrize("case", VARIATIONAL, ids=_ids)
def test_iwae_with_one_sample_is_the_elbo_in_expectation(case):
    testing.check_iwae_one_sample(case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_sample_draws_from_the_prior(case):
    testing.check_sample_from_prior(case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_short_training_run_improves_the_bound(case):
    testing.check_training_improves(case)


# -- the public entry point, as a family written outside vaelab calls it ------------------------


def test_check_family_runs_every_check_on_an_unregistered_class_and_unregisters_it(tmp_path):
    assert "mixtureprior" not in FAMILIES
    ran = testing.check_family(MixturePriorVAE, name="mixtureprior",
                               model={"latent_dim": 2, "mixtureprior": {"components": 3}}, folder=tmp_path)
    assert ran == list(testing.CHECKS)
    assert "mixtureprior" not in FAMILIES  # registered for the checks only
    assert (tmp_path / "run" / "model.safetensors").is_file()  # the save -> load check wrote there
    assert testing.check_family("ae", checks=["shapes", "kl"]) == ["shapes"]  # kl needs a q(z|x)


class _GlobalRNGVAE(VAE):
    """Breaks the contract: sample() draws with the global RNG, whatever generator it is given."""

    def sample(self, n: int, c: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
               noise: bool = False) -> torch.Tensor:
        return super().sample(n, c, generator=None, noise=noise)


def test_check_family_fails_a_family_that_breaks_the_contract():
    with pytest.raises(AssertionError, match="generator"):
        testing.check_family(_GlobalRNGVAE, name="globalrng", checks=["shapes", "generator"])
    assert "globalrng" not in FAMILIES


def test_vaelab_testing_does_not_need_pytest():
    import subprocess
    import sys

    code = "import sys, vaelab.testing; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- end to end: a family defined in the tests trains, evaluates, saves, loads, plots -----------


@pytest.mark.parametrize("kind", sorted(TEST_FAMILIES))
def test_a_runtime_family_trains_evaluates_saves_loads_and_plots(kind, tmp_path):
    from vaelab import evaluate_run, train_run
    from vaelab.plots import load_context, make_figures, plan
    from vaelab.report import metrics_table

    # Only settings every family takes: the rules that refuse settings a family cannot use
    # (train.objective, eval.k) still compare model.kind with "vae" until they read capabilities.
    cfg = RunConfig.from_dict({"data": {"name": "moons", "n_train": 256, "n_test": 64},
                               "model": {"kind": kind, "hidden": [16, 16]},
                               "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 64}})
    run = train_run(cfg, tmp_path / kind)
    assert len(run.history) == 2 and all(math.isfinite(v) for v in run.history.column("kl"))
    metrics = evaluate_run(run.path)
    assert math.isfinite(metrics["iwae_nll"]) and metrics["kl"] > 0
    assert metrics["kl_estimator"].startswith("Monte Carlo")  # no closed form for either family
    assert "KL estimated by</td><td class=\"num\">Monte Carlo" in metrics_table(metrics)
    loaded = ckpt.load(run.path)
    assert type(loaded.model) is TEST_FAMILIES[kind]
    x = torch.zeros(3, 2)
    torch.testing.assert_close(loaded.model.embed(x), run.model.embed(x), rtol=0, atol=0)
    ctx = load_context(run.path)
    apply, skip = plan(ctx)
    skipped = dict(skip)
    # What this family lacks is said, not drawn: the ellipses / μσ panels need a Normal q(z|x),
    # the N(0, I) circles a standard prior.
    if kind == "flowvae":
        assert "factorised Normal" in skipped["posterior_contours"]
        assert "z_vs_eps" not in skipped and "density" not in skipped
    else:
        assert "prior is not N(0, I)" in skipped["aggregate_posterior"]
    notes: list[str] = []
    paths = make_figures(run.path, ctx=ctx, notify=notes.append)
    assert sorted(p.stem for p in paths) == sorted(s.name for s in apply)
    assert not any("could not be drawn" in n for n in notes)
