"""Posterior-collapse diagnostics against a linear-Gaussian model whose I(x; z) is known in closed form.

x ~ N(0, Σ_x) in 3-D, q(z|x) = N(A x + b, diag s²) in 2-D, p(z) = N(0, I). Then the aggregate
posterior is q(z) = N(b, A Σ_x Aᵀ + S) with S = diag s², so

    I_q(x; z) = ½ log det(A Σ_x Aᵀ + S) − ½ log det S,   KL(q(z) ‖ p(z)) = KL(N(b, A Σ_x Aᵀ + S) ‖ N(0, I)).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence
from typer.testing import CliRunner

import vaelab.diagnostics as diagnostics
from vaelab.diagnostics import COLLAPSE_ADVICE, collapse_verdict, elbo_surgery, marginal_kl, mutual_info
from vaelab.errors import InputError

DT = torch.float64
L_X = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.6]], dtype=DT)  # Σ_x = L Lᵀ
A = torch.tensor([[0.8, -0.4, 0.3], [0.2, 0.6, -0.5]], dtype=DT)
B = torch.tensor([0.3, -0.2], dtype=DT)
S_DIAG = torch.tensor([0.5, 0.7], dtype=DT)


class LinearGaussian(nn.Module):
    """q(z|x, c) = N(A x + b, diag s²); prior N(0, I), or N(c @ W, I) when ``shift`` W is given."""

    def __init__(self, a: Tensor, b: Tensor, s: Tensor, shift: Tensor | None = None) -> None:
        super().__init__()
        self.a, self.b, self.s, self.shift = a, b, s, shift

    def encode(self, x: Tensor, c: Tensor | None = None) -> Independent:
        loc = x @ self.a.T + self.b  # (B, d)
        return Independent(Normal(loc, self.s.expand_as(loc)), 1)

    def prior(self, c: Tensor | None = None) -> Independent:
        zeros = torch.zeros_like(self.b)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)


class ConditionalPrior(LinearGaussian):
    """The same posterior with a prior that takes the condition: p(z|c) = N(c @ W, I)."""

    def prior(self, c: Tensor | None = None) -> Independent:  # type: ignore[override]
        loc = torch.zeros_like(self.b) if c is None else c @ self.shift  # (B, d)
        return Independent(Normal(loc, torch.ones_like(loc)), 1)


def draw_x(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=DT) @ L_X.T  # (n, 3) ~ N(0, Σ_x)


def closed_form(a: Tensor) -> tuple[float, float]:
    """(I_q(x; z), KL(q(z) ‖ p(z))) of the linear-Gaussian model with matrix ``a``."""
    s = torch.diag(S_DIAG**2)
    cov_q = a @ L_X @ L_X.T @ a.T + s
    mi = 0.5 * (torch.logdet(cov_q) - torch.logdet(s))
    prior = MultivariateNormal(torch.zeros(2, dtype=DT), torch.eye(2, dtype=DT))
    return float(mi), float(kl_divergence(MultivariateNormal(B, cov_q), prior))


def surgery(model: nn.Module, x: Tensor, c: Tensor | None = None, seed: int = 0) -> diagnostics.Surgery:
    return elbo_surgery(model, x, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimates_match_the_closed_form(seed):
    true_mi, true_mkl = closed_form(A)
    est = surgery(LinearGaussian(A, B, S_DIAG), draw_x(2000, seed), seed=seed)
    assert true_mi > 0.5 and true_mkl > 0.1  # neither is trivially 0
    assert abs(est.mutual_info.value - true_mi) < 4 * est.mutual_info.se
    assert abs(est.marginal_kl.value - true_mkl) < 4 * est.marginal_kl.se
    assert est.mutual_info.value <= math.log(2000)


def test_the_two_parts_add_up_to_the_average_kl_term():
    model = LinearGaussian(A, B, S_DIAG)
    x = draw_x(2000, 3)
    est = surgery(model, x)
    # Per point the two terms sum to log q(z|x) − log p(z) on the same draw, so exactly:
    assert est.mutual_info.value + est.marginal_kl.value == pytest.approx(est.avg_kl.value, abs=1e-10)
    # ... which estimates E_x KL(q(z|x) ‖ p(z)), here in closed form for the Normal posterior.
    avg_kl = float(kl_divergence(model.encode(x), model.prior()).mean())
    assert abs(est.avg_kl.value - avg_kl) < 4 * est.avg_kl.se
    # and, in closed form, I + marginal KL is the population average KL (HJ16, eq. 3)
    true_mi, true_mkl = closed_form(A)
    s2 = S_DIAG**2
    pop_avg_kl = 0.5 * float(s2.sum() + torch.trace(A @ L_X @ L_X.T @ A.T) + B.square().sum() - 2 - s2.log().sum())
    assert true_mi + true_mkl == pytest.approx(pop_avg_kl, rel=1e-12)


def test_conditional_prior_gets_each_points_condition():
    shift = torch.tensor([[1.0, -2.0]], dtype=DT)  # p(z|c) = N(c · (1, −2), I), c scalar per point
    model = ConditionalPrior(A, B, S_DIAG, shift)
    x = draw_x(1500, 4)
    c = torch.linspace(-1.0, 1.0, 1500, dtype=DT).unsqueeze(1)  # (N, 1)
    est = surgery(model, x, c)
    avg_kl = float(kl_divergence(model.encode(x, c), model.prior(c)).mean())  # each point's own c
    unconditional = float(kl_divergence(model.encode(x), model.prior()).mean())
    assert abs(avg_kl - unconditional) > 0.5  # the condition matters for this check to mean anything
    assert abs(est.avg_kl.value - avg_kl) < 4 * est.avg_kl.se
    # the posterior ignores c here, so the mutual information is the unconditional one
    assert abs(est.mutual_info.value - closed_form(A)[0]) < 4 * est.mutual_info.se


def test_standard_error_shrinks_with_n():
    model = LinearGaussian(A, B, S_DIAG)
    small = surgery(model, draw_x(250, 5)).mutual_info.se
    large = surgery(model, draw_x(2000, 6)).mutual_info.se
    # SE ∝ 1/√N: 8x the points, about √8 ≈ 2.8x smaller
    assert 2.0 < small / large < 4.0


def test_collapsed_posterior_has_no_mutual_information_and_gets_the_verdict():
    model = LinearGaussian(torch.zeros_like(A), B, S_DIAG)  # q(z|x) is the same for every x
    est = surgery(model, draw_x(500, 7))
    assert est.mutual_info.value == pytest.approx(0.0, abs=1e-12) and est.mutual_info.se < 1e-12
    _, true_mkl = closed_form(torch.zeros_like(A))
    assert abs(est.marginal_kl.value - true_mkl) < 4 * est.marginal_kl.se
    verdict = collapse_verdict({**est.as_metrics(), "active_units": 0, "latent_dim": 2})
    assert verdict is not None and verdict.collapsed
    for words in ("collapsed", "--beta-schedule warmup", "--free-bits", "lower --beta"):
        assert words in verdict.text
    healthy = collapse_verdict({**surgery(LinearGaussian(A, B, S_DIAG), draw_x(500, 7)).as_metrics(),
                                "active_units": 2, "latent_dim": 2})
    assert healthy is not None and not healthy.collapsed and COLLAPSE_ADVICE not in healthy.text


@pytest.mark.parametrize("metrics, collapsed", [
    ({"mutual_info": 0.05, "mutual_info_se": 0.01, "active_units": 2}, True),   # 0.07 < 0.1: near 0
    ({"mutual_info": 0.05, "mutual_info_se": 0.04, "active_units": 2}, False),  # 0.13: cannot tell
    ({"mutual_info": 1.5, "mutual_info_se": 0.02, "active_units": 0}, True),    # no active unit
    ({"mutual_info": 0.0, "mutual_info_se": float("nan"), "active_units": 1}, False),  # one point: no SE
])
def test_verdict_threshold_accounts_for_the_standard_error(metrics, collapsed):
    verdict = collapse_verdict(metrics)
    assert verdict is not None and verdict.collapsed is collapsed


def test_a_nan_mutual_information_gets_no_verdict():
    """Audit 0.2 (--nonfinite skip ending in a broken model): "No posterior collapse … I(x; z) = nan"
    was printed; a non-finite metric is an error (evaluate_run), never a verdict."""
    assert collapse_verdict({"mutual_info": float("nan"), "mutual_info_se": float("nan")}) is None


def test_no_verdict_without_mutual_information():
    assert collapse_verdict({"n": 10, "recon": 1.0, "recon_se": 0.1}) is None


def test_blocks_give_the_same_numbers_as_one_block(monkeypatch):
    # z = the posterior mean, so the draws do not depend on how the points are batched
    monkeypatch.setattr(diagnostics, "_draw", lambda q_z, generator: q_z.mean)
    model = LinearGaussian(A, B, S_DIAG)
    x = draw_x(700, 8)
    whole = elbo_surgery(model, x, generator=torch.Generator(), batch_size=700)
    monkeypatch.setattr(diagnostics, "BLOCK_BUDGET", 37 * 128 * 2)  # 37 rows x 128 columns x 2 dims
    pieces = elbo_surgery(model, x, generator=torch.Generator(), batch_size=128)
    assert pieces.mutual_info.value == pytest.approx(whole.mutual_info.value, abs=1e-12)
    assert pieces.marginal_kl.value == pytest.approx(whole.marginal_kl.value, abs=1e-12)


def test_explicit_generator_only():
    model = LinearGaussian(A, B, S_DIAG)
    x = draw_x(300, 9)
    state = torch.get_rng_state()
    first = mutual_info(model, x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not drawn from
    assert first == mutual_info(model, x, generator=torch.Generator().manual_seed(11))
    assert first != mutual_info(model, x, generator=torch.Generator().manual_seed(12))
    assert marginal_kl(model, x, generator=torch.Generator().manual_seed(11)).se > 0


def test_bad_inputs_are_refused():
    model = LinearGaussian(A, B, S_DIAG)
    g = torch.Generator()
    with pytest.raises(InputError, match="one condition per point"):
        elbo_surgery(model, draw_x(10, 0), torch.zeros(9, 1, dtype=DT), generator=g)
    with pytest.raises(InputError, match="no points"):
        elbo_surgery(model, torch.zeros(0, 3, dtype=DT), generator=g)
    with pytest.raises(InputError, match="batch_size"):
        elbo_surgery(model, draw_x(10, 0), generator=g, batch_size=0)
    with pytest.raises(InputError, match="no posterior"):
        elbo_surgery(nn.Linear(3, 2), draw_x(10, 0), generator=g)


# --- wired into evaluation, `vaelab eval` and the report -------------------------------------------

KEYS = {"mutual_info", "mutual_info_se", "marginal_kl", "marginal_kl_se"}


def test_evaluate_run_writes_the_diagnostics(trained_run: Path):
    from vaelab.evaluate import evaluate_run

    metrics = evaluate_run(trained_run, write=False)
    assert KEYS <= set(metrics)
    assert 0.0 <= metrics["mutual_info"] <= math.log(metrics["n"])
    assert all(math.isfinite(metrics[k]) and metrics[k + "_se"] > 0 for k in ("mutual_info", "marginal_kl"))
    # same draws as the run's seed: evaluating twice gives the same numbers
    assert evaluate_run(trained_run, write=False)["mutual_info"] == metrics["mutual_info"]


def test_autoencoder_has_no_diagnostics():
    from helpers import tiny_config
    from vaelab.data.registry import load_dataset
    from vaelab.evaluate import evaluate
    from vaelab.models import build_model

    cfg = tiny_config(model={"kind": "ae"})
    test = load_dataset(cfg.data, "test")
    model = build_model(cfg.model, test.dim, seed=0)
    assert not KEYS & set(evaluate(model, test))


def test_eval_command_and_report_say_whether_it_collapsed(trained_run: Path, tmp_path: Path):
    from vaelab.cli import app
    from vaelab.report import write_report

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    result = CliRunner().invoke(app, ["eval", str(run), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "mutual information I(x; z)" in text and "marginal KL(q(z) ‖ p(z))" in text
    metrics = json.loads(result.output.strip().splitlines()[-1])
    verdict = collapse_verdict(metrics)
    assert verdict is not None and " ".join(verdict.text.split()) in text

    # A collapsed run (its metrics say so) gets the words and the advice in the report.
    saved = json.loads((run / "metrics.json").read_text())
    saved.update(mutual_info=0.001, mutual_info_se=0.001, active_units=0)
    (run / "metrics.json").write_text(json.dumps(saved))
    html = write_report(run, names=["training_curves"]).read_text()
    assert 'id="collapse"' in html and "posterior has collapsed" in html
    assert "--beta-schedule warmup" in html and "--free-bits" in html
    assert "mutual information I(x; z) under the aggregate posterior" in html


@pytest.mark.parametrize("scale", ["plain", "logvar"])
def test_normal_shortcut_equals_log_prob(scale):
    from vaelab.models.vae import NormalLogVar

    g = torch.Generator().manual_seed(13)
    loc = 3 * torch.randn(40, 5, generator=g)  # (C, d)
    h = 4 * torch.randn(40, 5, generator=g)  # log σ² from e^-8 to e^8: small and large scales
    base = NormalLogVar(loc, h) if scale == "logvar" else Normal(loc, torch.exp(0.5 * h))
    q_z = Independent(base, 1)
    z = 3 * torch.randn(30, 5, generator=g)  # (R, d)
    z[:5] = loc[:5] + 1e-3 * torch.randn(5, 5, generator=g)  # draws right next to their own posterior
    # the same distribution's log_prob, in float64 so that the comparison sees the shortcut's own error
    reference = Independent(Normal(loc.double(), base.scale.double()), 1).log_prob(z.double().unsqueeze(1))
    shortcut = diagnostics._log_q_block(q_z, z)
    assert shortcut.shape == (30, 40) and shortcut.dtype == DT
    torch.testing.assert_close(shortcut, reference, rtol=1e-9, atol=1e-6)


class FullCovariance(LinearGaussian):
    """The same posterior as a MultivariateNormal: not an Independent Normal, so the estimator
    goes through the distribution's own log_prob (as it does for flows and mixtures)."""

    def encode(self, x: Tensor, c: Tensor | None = None) -> MultivariateNormal:  # type: ignore[override]
        loc = x @ self.a.T + self.b  # (B, d)
        return MultivariateNormal(loc, scale_tril=torch.diag(self.s).expand(len(loc), 2, 2))


def test_any_family_through_its_log_prob(monkeypatch):
    from vaelab.distributions import rsample

    def draw(q_z, generator):  # z = μ + L ε: vaelab.distributions.rsample of a MultivariateNormal
        return rsample(q_z, (), generator)

    x = draw_x(1500, 14)
    generic = surgery(FullCovariance(A, B, S_DIAG), x, seed=5)
    true_mi, true_mkl = closed_form(A)
    assert abs(generic.mutual_info.value - true_mi) < 4 * generic.mutual_info.se
    assert abs(generic.marginal_kl.value - true_mkl) < 4 * generic.marginal_kl.se
    # the same draws through the diagonal-Normal shortcut give the same numbers
    monkeypatch.setattr(diagnostics, "_draw", lambda q_z, generator: draw(
        MultivariateNormal(q_z.mean, scale_tril=torch.diag_embed(q_z.stddev)), generator))
    shortcut = surgery(LinearGaussian(A, B, S_DIAG), x, seed=5)
    assert shortcut.mutual_info.value == pytest.approx(generic.mutual_info.value, abs=1e-9)
    assert shortcut.marginal_kl.value == pytest.approx(generic.marginal_kl.value, abs=1e-9)


def test_posteriors_without_the_normal_shortcut_use_the_first_generic_points(monkeypatch):
    """A flow's q(z_i|x_n) for every pair costs an inversion each: 10,000 test points of an IAF run
    took hours. Such posteriors enter the estimate with their first GENERIC_POINTS points only, and
    give exactly the numbers of those points alone; metrics.json says how many."""
    from vaelab.config import ModelConfig
    from vaelab.models import build_model

    model = build_model(ModelConfig(latent_dim=2), x_dim=2, seed=0)
    x = torch.randn(diagnostics.GENERIC_POINTS + 300, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        alone = elbo_surgery(model, x[:diagnostics.GENERIC_POINTS], generator=torch.Generator().manual_seed(1))
        assert alone.n == diagnostics.GENERIC_POINTS and "mutual_info_points" not in alone.as_metrics()
        whole = elbo_surgery(model, x, generator=torch.Generator().manual_seed(1))
        assert whole.n == len(x)  # a diagonal Normal: every point
        monkeypatch.setattr(diagnostics, "_diagonal_normal", lambda q_z: False)  # as a flow would be scored
        generic = elbo_surgery(model, x, generator=torch.Generator().manual_seed(1))
    assert generic.n == diagnostics.GENERIC_POINTS and generic.of == len(x)
    assert generic.as_metrics()["mutual_info_points"] == diagnostics.GENERIC_POINTS
    for a, b in ((generic.mutual_info, alone.mutual_info), (generic.marginal_kl, alone.marginal_kl)):
        # (the generic path scores in float32, the shortcut in float64)
        assert a.value == pytest.approx(b.value, abs=1e-6) and a.se == pytest.approx(b.se, rel=1e-4)
