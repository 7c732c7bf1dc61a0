"""Held-out evaluation: numbers against closed forms, the run-level evaluation the CLI and the
API share, conditional gaps against the exact conditional density, and refusals."""

import importlib
import json
import math

import pytest
import torch
from torch.distributions import MultivariateNormal
from typer.testing import CliRunner

from helpers import tiny_config
from test_objectives import closed_form_elbo, exact_log_px, linear_vae
from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.config import ConfigError, ModelConfig
from vaelab.data.dataset import Dataset
from vaelab.data.registry import load_dataset
from vaelab.data.toy2d import RING_STD, ring_params
from vaelab.evaluate import (
    EvaluationError,
    decoder_width,
    evaluate,
    evaluate_run,
    iwae_chunk,
)
from vaelab.likelihoods import DataSupportError
from vaelab.models import build_model
from vaelab.train import train_run

runner = CliRunner()


def _cli_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_elbo_and_nll_match_the_linear_gaussian_closed_forms():
    # Probabilistic PCA: the ELBO and log p(x) are known exactly, per point.
    model = linear_vae(d=2, D=3, var=0.5, seed=3)
    x = torch.randn(400, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    m = evaluate(model, Dataset("pts", x), k=500, seed=1)
    with torch.no_grad():
        elbo_points = closed_form_elbo(model, x)
        nll_exact = -exact_log_px(model, x).mean()
    # Averaging k samples per point leaves Monte Carlo noise far below the reported standard
    # error (0.30 here, the spread over points), which matches the closed-form per-point ELBOs.
    assert m["elbo"] == pytest.approx(float(elbo_points.mean()), abs=0.03)
    assert m["elbo_se"] == pytest.approx(float(elbo_points.std() / math.sqrt(400)), rel=0.05)
    # -L_k bounds -log p(x) from above and sits well below -ELBO for this mismatched posterior
    assert float(nll_exact) < m["iwae_nll"] < -m["elbo"] - 3
    assert m["recon_se"] > 0 and m["kl_se"] > 0 and m["iwae_k"] == 500 and m["eval_seed"] == 1


def test_a_fair_coin_decoder_scores_exactly_one_bit_per_pixel():
    # Zero weights: p(x|z) = Bernoulli(1/2)^D and q(z|x) = N(0, I) = p(z), so every log weight is
    # -D ln 2 and the NLL, the ELBO and the bits per dimension are exact numbers.
    model = build_model(ModelConfig(hidden=[8], latent_dim=3, likelihood="bernoulli"), 16)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    x = (torch.rand(50, 16, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    m = evaluate(model, Dataset("bits", x, image_shape=(1, 4, 4)), k=7)
    assert m["iwae_nll"] == pytest.approx(16 * math.log(2), abs=1e-5)
    assert m["elbo"] == pytest.approx(-16 * math.log(2), abs=1e-5) and m["kl"] == pytest.approx(0, abs=1e-6)
    assert m["iwae_bpd"] == pytest.approx(1.0, abs=1e-6) and m["elbo_bpd"] == pytest.approx(1.0, abs=1e-6)
    assert m["active_units"] == 0


def test_active_units_count_only_the_dimensions_that_depend_on_x():
    model = build_model(ModelConfig(hidden=[], latent_dim=3), 2, seed=0)
    lin = model.encoder[0]  # x (2) -> [μ (3), log σ² (3)]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0, 0] = 1.0  # μ_1 = x_1: active; μ_2, μ_3 constant: inactive
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    assert evaluate(model, Dataset("pts", x), k=4)["active_units"] == 1


def test_evaluation_is_reproducible_and_the_seed_matters(trained_run):
    run = ckpt.load(trained_run)
    test = load_dataset(run.config.data, "test")
    assert evaluate(run.model, test, k=20, seed=1) == evaluate(run.model, test, k=20, seed=1)
    assert evaluate(run.model, test, k=20, seed=1)["iwae_nll"] != evaluate(run.model, test, k=20, seed=2)["iwae_nll"]


def test_the_unconditional_gap_is_paired_against_the_true_density(trained_run):
    run = ckpt.load(trained_run)
    test = load_dataset(run.config.data, "test")
    m = evaluate(run.model, test, k=50)
    direct = -MultivariateNormal(*_ring_components()).log_prob(test.x.double()[:, None, :]).exp().mean(1).log()
    assert m["true_nll"] == pytest.approx(float(direct.mean()), rel=1e-6)  # float32 densities
    assert m["nll_gap"] == pytest.approx(m["iwae_nll"] - m["true_nll"], abs=1e-9)


def _ring_components():
    _, means, covs = ring_params()
    return means, covs


def test_no_true_density_for_moons(tmp_path):
    run = train_run(tiny_config(data={"name": "moons"}), tmp_path / "m")
    m = evaluate(run.model, load_dataset(run.config.data, "test"), k=10)
    assert "nll_gap" not in m and "iwae_nll" in m


def test_autoencoder_reports_reconstruction_only_and_refuses_k(tmp_path):
    run = train_run(tiny_config(model={"kind": "ae"}), tmp_path / "ae")
    test = load_dataset(run.config.data, "test")
    m = evaluate(run.model, test)
    assert set(m) == {"n", "recon", "recon_se"} and m["recon_se"] > 0
    with pytest.raises(EvaluationError, match="deterministic"):
        evaluate(run.model, test, k=10)


# -- chunking (issue 8, item 10) ---------------------------------------------------------------


def test_chunk_size_shrinks_with_wider_nets():
    narrow = build_model(ModelConfig(hidden=[16]), 2, seed=0)
    wide = build_model(ModelConfig(hidden=[4096, 4096]), 2, seed=0)
    assert decoder_width(narrow) == 16 and decoder_width(wide) == 4096
    assert iwae_chunk(1000, 500, decoder_width(wide)) < iwae_chunk(1000, 500, decoder_width(narrow))
    # a decoded chunk of the wide net stays within the budget: chunk · batch · width · 3 ≤ 2**24
    assert iwae_chunk(1000, 500, 4096) * 500 * 4096 * 3 <= 2**24 or iwae_chunk(1000, 500, 4096) == 1


def test_chunked_evaluation_equals_unchunked(trained_run, monkeypatch):
    ev = importlib.import_module("vaelab.evaluate")  # vaelab.evaluate is also the function's name

    run = ckpt.load(trained_run)
    test = load_dataset(run.config.data, "test")
    whole = evaluate(run.model, test, k=64, seed=3)
    monkeypatch.setattr(ev, "CHUNK_BUDGET", 3 * 16 * 128 * 5)  # 5 samples per chunk for 128 points
    assert ev.iwae_chunk(64, 128, 16) == 5
    assert evaluate(run.model, test, k=64, seed=3) == whole


# -- the run-level evaluation: one function for the API and the CLI (item 4) -------------------


def test_api_and_cli_agree_on_a_bernoulli_image_run(tmp_path):
    cfg = tiny_config(
        data={"name": "digits8", "limit_train": 128, "limit_test": 40},
        model={"hidden": [16], "likelihood": "bernoulli"}, eval={"k": 6},
    )
    run = train_run(cfg, tmp_path / "img")
    api = evaluate_run(run.path, write=False)
    cli = _cli_json("eval", str(run.path), "--no-quality")  # sample quality: tests/test_quality.py
    assert api == cli and api["binarization"].startswith("fixed") and "iwae_bpd" in api
    # The grey-level test split is refused, not scored with a cross-entropy called a likelihood.
    with pytest.raises(DataSupportError, match="not binary.*[Bb]inarize"):
        evaluate(run.model, load_dataset(cfg.data, "test"), k=6)


def _exact_ring_cvae(run_dir):
    """Set a label-conditional linear VAE to the exact model of ring: x = μ_c + a z + σ ε, with the
    exact posterior as encoder, so every importance weight equals p(x|c) and the gap is 0."""
    run = ckpt.load(run_dir)
    model = run.model
    _, means, _ = ring_params()
    a, s2 = 0.1, RING_STD**2
    var = s2 - a**2  # observation noise: a² + σ² = the component variance
    enc, dec = model.encoder[0], model.decoder[0]  # [x (2), c (8)] -> [μ, log σ²]; [z (2), c (8)] -> [mean, log var]
    with torch.no_grad():
        for p in (*enc.parameters(), *dec.parameters()):
            p.zero_()
        dec.weight[0:2, 0:2] = a * torch.eye(2)
        dec.weight[0:2, 2:10] = means.T.float()
        dec.bias[2:4] = math.log(var)
        enc.weight[0:2, 0:2] = a / s2 * torch.eye(2)
        enc.weight[0:2, 2:10] = -(a / s2) * means.T.float()
        enc.bias[2:4] = math.log(var / s2)  # posterior variance σ²/(a² + σ²)
    saved = ckpt.load(run_dir)
    ckpt.save(run_dir, model, saved.config, condition=saved.condition, overwrite=True)


def test_conditional_gap_uses_the_conditional_density(tmp_path):
    cfg = tiny_config(data={"condition": "label", "n_test": 300},
                      model={"hidden": [], "likelihood": "gaussian-learned", "scale": "logvar"},
                      train={"epochs": 1})
    out = train_run(cfg, tmp_path / "cond").path
    _exact_ring_cvae(out)
    m = evaluate_run(out, write=False)
    test = load_dataset(cfg.data, "test")
    means, covs = _ring_components()
    direct = -MultivariateNormal(means[test.labels], covs[test.labels]).log_prob(test.x.double())
    assert m["true_nll"] == pytest.approx(float(direct.mean()), rel=1e-6)  # float32 densities
    # the exact model: its NLL is the true conditional one (was -log 8 = -2.079 against log p(x))
    assert abs(m["nll_gap"]) < 1e-3 and m["nll_gap_se"] < 1e-3
    assert m["iwae_nll"] == pytest.approx(m["true_nll"], abs=1e-3)
    assert _cli_json("eval", str(out)) == m


def test_radius_condition_omits_the_gap_and_says_why(tmp_path):
    run = train_run(tiny_config(data={"condition": "radius"}, train={"epochs": 1}), tmp_path / "rad")
    m = evaluate_run(run, write=False)
    assert "nll_gap" not in m and "true_nll" not in m and "circle" in m["nll_gap_note"]
    assert "radius_tracking" in m


# -- metrics.json: what eval writes (audit section 5) ------------------------------------------


def test_eval_with_other_settings_keeps_the_runs_metrics(tmp_path):
    run = train_run(tiny_config(), tmp_path / "r")
    first = evaluate_run(run.path)  # no metrics yet: written
    saved = (run.path / ckpt.METRICS_FILE).read_bytes()
    recorded = json.loads(saved)
    assert recorded.pop("checkpoint")["step"] == run.step  # tagged with the checkpoint it scored
    assert recorded == first and first["iwae_k"] == 16
    result = runner.invoke(app, ["eval", str(run.path), "--k", "5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "kept as it was" in result.output and "--save" in result.output
    assert (run.path / ckpt.METRICS_FILE).read_bytes() == saved
    result = runner.invoke(app, ["eval", str(run.path), "--k", "5", "--save", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((run.path / ckpt.METRICS_FILE).read_text())["iwae_k"] == 5


def test_eval_prints_the_metrics_before_a_failed_write(tmp_path, monkeypatch):
    # E34: a run folder that cannot be written still shows its numbers, and the error names metrics.json
    run = train_run(tiny_config(), tmp_path / "ro")

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path.parent / ".metrics.json.x.tmp"))

    monkeypatch.setattr(ckpt.records, "write_json", refuse)  # how metrics.json is written
    result = runner.invoke(app, ["eval", str(run.path), "--device", "cpu"])
    assert result.exit_code == 2 and "IWAE NLL" in result.output
    assert "metrics.json: cannot write" in result.output.replace("\n", "") and ".tmp" not in result.output


# -- refusals: audit A22-A28, A05, A15, A47 and the eval / decode CLI cases ---------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"k": 0}, "k must be a positive integer"),  # A23
    ({"k": -1}, "k must be a positive integer"),  # A24
    ({"batch_size": 0}, "batch_size must be a positive integer"),  # A25
    ({"seed": 2**80}, "seed must be an integer from"),  # E08 through the API
])
def test_evaluate_refuses_bad_settings(trained_run, kwargs, match):
    run = ckpt.load(trained_run)
    with pytest.raises((EvaluationError, ConfigError), match=match):
        evaluate(run.model, load_dataset(run.config.data, "test"), **kwargs)


def test_evaluate_refuses_data_that_does_not_fit(trained_run):
    run = ckpt.load(trained_run)
    with pytest.raises(EvaluationError, match="no points"):  # A26
        evaluate(run.model, Dataset("empty", torch.zeros(0, 2)))
    with pytest.raises(EvaluationError, match="3 columns.*x_dim = 2"):  # A28
        evaluate(run.model, Dataset("wide", torch.zeros(10, 3)))
    with pytest.raises(EvaluationError, match="must be a vaelab Dataset"):
        evaluate(run.model, [[0.0, 1.0]])
    x = load_dataset(run.config.data, "test").x  # A27: a raw (N, D) tensor is evaluated as it is
    assert evaluate(run.model, x, k=5) == evaluate(run.model, Dataset("tensor", x), k=5)


def test_model_calls_name_the_sizes_they_expect():
    model = build_model(ModelConfig(hidden=[8], latent_dim=2), 2, cond_dim=3, seed=0)
    c = torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"x has shape \(5, 3\).*x_dim is 2"):  # A05
        model.encode(torch.zeros(5, 3), c)
    with pytest.raises(ValueError, match=r"z has shape \(5, 3\).*latent_dim is 2"):  # A15
        model.decode(torch.zeros(5, 3), c)
    with pytest.raises(ValueError, match=r"c has shape \(3, 3\).*one condition per row"):  # A47
        model.encode(torch.zeros(5, 2), torch.zeros(3, 3))
    assert model.sample(4, torch.zeros(1, 3)).shape == (4, 2)  # one shared row is fine
    with pytest.raises(ValueError, match="non-negative integer.*2.5"):  # A22
        model.sample(2.5, torch.zeros(1, 3))


def test_eval_cli_refusals_print_no_traceback(trained_run, tmp_path):
    cases = [
        (["eval", str(trained_run), "--seed", str(2**80)], "seed must be an integer"),  # E08
        (["eval", str(trained_run), "--n-test", str(10**11)], "too many test points"),  # X15
        (["eval", str(trained_run), "--k", "0"], "k must be a positive integer"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--device", "cpu"])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_decode_cli_seed_refusals(trained_run, tmp_path):
    z = tmp_path / "z.csv"
    z.write_text("z1,z2\n0,0\n1,1\n")
    out = str(tmp_path / "x.csv")
    result = runner.invoke(app, ["decode", str(trained_run), "-i", str(z), "-o", out, "--noise", "--seed",
                                 str(2**80), "--device", "cpu"])  # D07
    assert result.exit_code == 2 and "--seed must be an integer" in result.output
    result = runner.invoke(app, ["decode", str(trained_run), "-i", str(z), "-o", out, "--seed", "3",
                                 "--device", "cpu"])  # --seed without --noise changed nothing
    assert result.exit_code == 2 and "--noise" in result.output


def test_eval_of_a_file_run_whose_data_changed_width(tmp_path):
    # E27: the data file now has 3 columns; the model was trained on 2
    import numpy as np

    path = tmp_path / "pts.csv"
    np.savetxt(path, np.random.default_rng(0).normal(size=(60, 2)), delimiter=",", header="a,b", comments="")
    run = train_run(tiny_config(data={"path": str(path)}), tmp_path / "file")
    np.savetxt(path, np.random.default_rng(0).normal(size=(60, 3)), delimiter=",", header="a,b,c", comments="")
    result = runner.invoke(app, ["eval", str(run.path), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "3 columns" in result.output and "x_dim = 2" in result.output


def test_n_test_is_refused_for_data_with_a_fixed_test_split(tmp_path):
    cfg = tiny_config(data={"name": "digits8", "limit_train": 64, "limit_test": 16},
                      model={"hidden": [8], "likelihood": "bernoulli"}, eval={"k": 2}, train={"epochs": 1})
    run = train_run(cfg, tmp_path / "img")
    with pytest.raises(EvaluationError, match="fixed test split"):
        evaluate_run(run, n_test=10, write=False)


def test_evaluation_builds_no_autograd_graph(trained_run):
    # Under autograd every chunk's activations would be kept: evaluation must run without it.
    run = ckpt.load(trained_run)
    seen = []
    handle = run.model.decoder.register_forward_hook(lambda m, i, out: seen.append(out.requires_grad))
    try:
        with torch.enable_grad():
            evaluate(run.model, load_dataset(run.config.data, "test"), k=4)
    finally:
        handle.remove()
    assert seen and not any(seen)


def test_evaluation_encodes_each_batch_once_and_keeps_the_numbers(trained_run):
    # One encoder pass per batch feeds the KL, the importance samples and the collapse diagnostics;
    # the numbers are those of the functions that encode for themselves, drawn in the same order.
    from vaelab.diagnostics import elbo_surgery
    from vaelab.objectives import log_importance_weights

    run = ckpt.load(trained_run)
    model = run.model.eval()
    x = load_dataset(run.config.data, "test").x  # 128 points
    calls = []
    handle = model.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = evaluate(model, x, k=16, batch_size=50, seed=3)
    finally:
        handle.remove()
    assert len(calls) == 3  # 128 points in batches of 50

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        log_w = torch.cat([log_importance_weights(model, x[s:s + 50], k=16, generator=g)
                           for s in range(0, 128, 50)], dim=1)  # (16, 128)
        surgery = elbo_surgery(model, x, generator=g, batch_size=50)
    nll = -(torch.logsumexp(log_w.double(), dim=0) - math.log(16))
    assert got["iwae_nll"] == float(nll.mean())
    assert got["mutual_info"] == surgery.mutual_info.value
    assert got["marginal_kl"] == surgery.marginal_kl.value


def test_elbo_surgery_refuses_posteriors_of_other_batches(trained_run):
    from vaelab.diagnostics import elbo_surgery
    from vaelab.errors import InputError

    run = ckpt.load(trained_run)
    x = load_dataset(run.config.data, "test").x[:100]
    with torch.no_grad():
        q_z = run.model.encode(x)
    with pytest.raises(InputError, match="posteriors holds 1 batches; 100 points in batches of 50 make 2"):
        elbo_surgery(run.model, x, generator=torch.Generator(), batch_size=50, posteriors=[q_z])
