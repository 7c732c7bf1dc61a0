"""The learned-prior families (vaelab.models.priors): ``vamp`` (VampPrior) and ``mog`` (mixture of Gaussians).

Densities against the mixture written out by hand; the VampPrior's cached p(z) against a fresh
one, and its invalidation; training on 2-D data and on digits improves the held-out bound; the
stacked sweep trains them as fit does; refusals; save -> load; the CLI's sample / eval / plot.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from helpers import assert_stacked_equals_solo, cli_ok, tiny_config
from vaelab import checkpoint as ckpt
from vaelab import train_run
from vaelab.config import ConfigError, RunConfig
from vaelab.data.pixels import eval_view
from vaelab.data.registry import load_dataset
from vaelab.errors import InputError
from vaelab.evaluate import evaluate
from vaelab.models import MixtureOfGaussiansVAE, VampVAE, build_model
from vaelab.objectives import iwae_bound
from vaelab.train import can_stack

LOG_2PI = math.log(2 * math.pi)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _build(kind: str, x_dim: int = 2, cond_dim: int = 0, **model: object):
    cfg = tiny_config(model={"kind": kind, **model})
    return build_model(cfg.model, x_dim, cond_dim, seed=0).eval()


def _jiggle(model: torch.nn.Module, seed: int = 7, scale: float = 0.3) -> None:
    """Move every weight away from its initialisation (so no value is special)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _log_normal_diag(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag σ²) = -½ Σ_j ((z_j − μ_j)/σ_j)² + 2 log σ_j + log 2π: z (N, 1, d), μ σ (K, d) -> (N, K)."""
    return -0.5 * (((z - mu) / sigma) ** 2 + 2 * sigma.log() + LOG_2PI).sum(-1)


# -- densities ----------------------------------------------------------------------------------


def test_mog_density_is_the_explicit_mixture():
    model = _build("mog", latent_dim=3, mog={"components": 4})
    _jiggle(model)
    z = 2 * torch.randn(50, 3, generator=_gen(1))
    m, h, logits = model.prior_means, model.prior_scale_raw, model.prior_logits
    s = torch.log1p(torch.exp(h)) + 1e-3  # softplus + floor
    log_pi = logits - torch.logsumexp(logits, 0)  # (K,)
    explicit = torch.logsumexp(log_pi + _log_normal_diag(z[:, None], m, s), dim=1)  # (N,)
    with torch.no_grad():
        torch.testing.assert_close(model.prior().log_prob(z), explicit, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(log_pi, log_pi[0].expand(4))  # the jiggled weights are not uniform: π counts


def test_vamp_density_is_the_explicit_mixture_over_the_encoded_pseudo_inputs():
    model = _build("vamp", x_dim=4, latent_dim=2, vamp={"components": 5})
    _jiggle(model)
    z = 2 * torch.randn(50, 2, generator=_gen(2))
    with torch.no_grad():
        u = model.prior_w  # identity link (a Gaussian likelihood): u_k = w_k
        mu, log_var = model.encoder(u).chunk(2, dim=-1)  # (K, d) each: the encoder's own q(z|u_k)
        sigma = torch.exp(0.5 * log_var)
        # eq. 9: p(z) = (1/K) Σ_k N(z; μ(u_k), diag σ²(u_k))
        explicit = torch.logsumexp(_log_normal_diag(z[:, None], mu, sigma), dim=1) - math.log(5)
        torch.testing.assert_close(model.prior().log_prob(z), explicit, rtol=1e-5, atol=1e-5)


def test_vamp_pseudo_inputs_stay_in_the_pixel_range_under_a_bernoulli_likelihood_and_go_through_a_conv_body():
    model = _build("vamp", x_dim=64, latent_dim=3, net="conv", channels=[2, 4], likelihood="bernoulli",
                   vamp={"components": 6})
    assert model.link == "hardtanh"
    u0 = model.pseudo_inputs().detach()
    assert 0.0 <= float(u0.min()) and float(u0.max()) < 0.15  # near black, as the paper's code starts them
    with torch.no_grad():
        model.prior_w.copy_(10 * torch.randn(6, 64, generator=_gen(0)))  # far out on both sides: clamped to [0, 1]
        u = model.pseudo_inputs()
        assert u.shape == (6, 64) and bool(((u >= 0) & (u <= 1)).all())
        assert float(u.min()) == 0.0 and float(u.max()) == 1.0
        components = model.prior().component_distribution
        torch.testing.assert_close(components.mean, model.encode(u).mean, rtol=0, atol=0)
    assert _build("vamp", vamp={"link": "hardtanh"}).link == "hardtanh"  # a given link is used as given
    assert _build("vamp").link == "identity"


def test_mog_means_start_spread_apart_and_are_a_function_of_the_seed():
    cfg = tiny_config(model={"kind": "mog", "latent_dim": 2, "mog": {"components": 8, "spread": 3.0}}).model
    a, b, other = (build_model(cfg, 2, seed=s).prior_means.detach() for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, other)
    torch.testing.assert_close(a.norm(dim=1), torch.full((8,), 3.0))  # all at the distance `spread`
    gaps = torch.cdist(a, a) + torch.eye(8) * 1e9
    # 8 points on a circle of radius 3 are at most 2·3·sin(π/8) = 2.30 apart from their nearest: greedy gets near it
    assert gaps.min() > 1.5
    with torch.no_grad():
        scale = build_model(cfg, 2, seed=0).prior().component_distribution.stddev
    torch.testing.assert_close(scale, torch.ones(8, 2))


# -- the VampPrior's cached p(z) ----------------------------------------------------------------


def _count_pseudo_input_passes(model: VampVAE) -> list[int]:
    """A list that grows by one each time the encoder runs on the K pseudo-inputs."""
    calls: list[int] = []
    k = model.components

    def hook(module, args, output):  # noqa: ANN001, ANN202
        if args[0].shape[0] == k:
            calls.append(1)

    model.encoder.register_forward_hook(hook)
    return calls


def test_vamp_prior_is_cached_in_evaluation_equals_a_fresh_one_and_follows_weight_changes():
    model = _build("vamp", x_dim=3, latent_dim=2, vamp={"components": 7})
    passes = _count_pseudo_input_passes(model)
    z = torch.randn(30, 2, generator=_gen(3))

    def fresh() -> torch.Tensor:
        with torch.enable_grad():  # with gradients on, p(z) is always computed afresh
            return model.prior().log_prob(z).detach()

    with torch.no_grad():
        first = model.prior()
        assert model.prior() is first and len(passes) == 1  # the second call ran no encoder
        torch.testing.assert_close(first.log_prob(z), fresh(), rtol=0, atol=0)

        # load_state_dict (other weights) invalidates it
        other = copy.deepcopy(model)
        _jiggle(other)
        model.load_state_dict(other.state_dict())
        after_load = model.prior()
        assert after_load is not first
        torch.testing.assert_close(after_load.log_prob(z), fresh(), rtol=0, atol=0)
        assert not torch.allclose(after_load.log_prob(z), first.log_prob(z))

    # an optimizer step invalidates it: plain Adam, and the fused kernel training uses, which does
    # not bump the tensors' version counters
    for fused in (False, True):
        opt = torch.optim.Adam(model.parameters(), lr=0.05, fused=fused or None)
        with torch.no_grad():
            before = model.prior()
        model.zero_grad()
        with torch.enable_grad():
            model.prior().log_prob(z).sum().neg().backward()
        opt.step()
        with torch.no_grad():
            stepped = model.prior()
            assert stepped is not before
            torch.testing.assert_close(stepped.log_prob(z), fresh(), rtol=0, atol=0)
            assert not torch.allclose(stepped.log_prob(z), before.log_prob(z))

    # in training mode, or with gradients on, never cached (training differentiates through it)
    model.train()
    with torch.no_grad():
        assert model.prior() is not model.prior()
    model.eval()
    assert model.prior() is not model.prior()


def test_evaluation_runs_the_encoder_on_the_pseudo_inputs_once_not_once_per_batch():
    cfg = tiny_config(model={"kind": "vamp", "latent_dim": 2, "vamp": {"components": 5}})
    test = load_dataset(cfg.data, "test")  # 128 points
    model = build_model(cfg.model, 2, seed=0).eval()
    passes = _count_pseudo_input_passes(model)
    metrics = evaluate(model, test, k=8, batch_size=32, seed=0)  # 4 batches
    assert math.isfinite(metrics["iwae_nll"])
    assert len(passes) == 1
    with torch.no_grad():
        iwae_bound(model, test.x[:10], k=4, generator=_gen(0))
    assert len(passes) == 1  # the weights did not change: still the same p(z)


# -- training improves the bound ----------------------------------------------------------------


def _bound_before_and_after(cfg: RunConfig, tmp_path) -> tuple[dict, dict, int]:
    train_data = load_dataset(cfg.data, "train")
    test = eval_view(cfg, load_dataset(cfg.data, "test"))[0]
    untrained = build_model(cfg.model, train_data.dim, seed=cfg.train.seed).eval()  # what train_run starts from
    before = evaluate(untrained, test, k=16, seed=0)
    run = train_run(cfg, tmp_path / "run")
    after = evaluate(run.model.eval(), test, k=16, seed=0)
    return before, after, int(run.history.rows[-1]["step"])


@pytest.mark.parametrize("kind", ["vamp", "mog"])
def test_training_on_2d_data_improves_the_held_out_bound(kind, tmp_path):
    cfg = RunConfig.from_dict({
        "data": {"name": "moons", "n_train": 512, "n_test": 256},
        "model": {"kind": kind, "hidden": [32, 32], "latent_dim": 2},
        "train": {"epochs": 38, "batch_size": 64, "objective": "elbo", "diversity_samples": 64,
                  "checkpoint_every": 38}})
    before, after, steps = _bound_before_and_after(cfg, tmp_path)
    assert steps == 304
    # Measured (nats): vamp -ELBO 2.61 -> 1.85, IWAE NLL 2.59 -> 1.82; mog -ELBO 3.23 -> 2.03, IWAE NLL 2.69 -> 1.99.
    assert -after["elbo"] < -before["elbo"] - 0.3
    assert after["iwae_nll"] < before["iwae_nll"] - 0.3
    assert after["kl_estimator"].startswith("Monte Carlo")


@pytest.mark.parametrize("kind", ["vamp", "mog"])
def test_training_on_digits_improves_the_held_out_bound(kind, tmp_path):
    cfg = RunConfig.from_dict({
        "data": {"name": "digits8"},  # scikit-learn's 8x8 digits, dynamically binarized for the Bernoulli p(x|z)
        "model": {"kind": kind, "hidden": [64, 64], "latent_dim": 4, "likelihood": "bernoulli"},
        "train": {"epochs": 13, "batch_size": 64, "objective": "elbo", "diversity_samples": 64,
                  "checkpoint_every": 13}})
    before, after, steps = _bound_before_and_after(cfg, tmp_path)
    assert steps == 13 * math.ceil(len(load_dataset(cfg.data, "train")) / 64) > 300
    # Measured (nats): vamp -ELBO 44.4 -> 27.2, IWAE NLL 44.2 -> 27.2; mog -ELBO 44.8 -> 27.2, IWAE NLL 44.3 -> 27.2.
    # At this budget the gain is mostly the decoder's: KL ≈ 0.01-0.06 nats, the code nearly unused (the VAE with the
    # same budget: -ELBO 26.5, KL 0.70; a learned prior can follow a collapsing q(z|x), N(0, I) cannot).
    assert -after["elbo"] < 0.8 * -before["elbo"]
    assert after["iwae_nll"] < 0.8 * before["iwae_nll"]


# -- the stacked sweep ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vamp", "mog"])
def test_stacked_members_equal_their_solo_fit(kind):
    base = RunConfig.from_dict({
        "data": {"name": "ring", "n_train": 200},
        "model": {"kind": kind, "hidden": [16, 16], "likelihood": "gaussian", kind: {"components": 4}},
        "train": {"objective": "elbo", "epochs": 4, "batch_size": 64, "diversity_samples": 32,
                  "checkpoint_every": 2}})
    configs = [base.with_overrides({"train": {"beta": 0.5}}), base.with_overrides({"train": {"beta": 2.0, "seed": 3}})]
    assert can_stack([c.model for c in configs], [c.train for c in configs]) is None
    assert_stacked_equals_solo(configs, ("loss", "recon", "kl", "diversity"))
    # members with another K cannot share one stack, and can_stack says so
    other = base.with_overrides({"model": {kind: {"components": 5}}})
    assert f"model.{kind}" in (can_stack([base.model, other.model], [base.train, base.train]) or "")


# -- refusals ---------------------------------------------------------------------------------------


def test_vamp_with_a_condition_is_refused_naming_what_to_use():
    cfg = tiny_config(model={"kind": "vamp"}, data={"condition": "label"})
    with pytest.raises(InputError, match=r"the vamp family has no conditional form.*use --model vae"):
        build_model(cfg.model, 2, cond_dim=8)
    model = _build("vamp")
    with pytest.raises(InputError, match="call prior\\(\\) with c=None"):
        model.prior(torch.zeros(1, 3))


def test_train_run_refuses_vamp_on_conditional_data(tmp_path):
    cfg = tiny_config(model={"kind": "vamp"}, data={"condition": "label"})
    with pytest.raises(InputError, match="drop the condition"):
        train_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize(("model", "message"), [
    ({"kind": "mog", "mog": {"components": 0}},
     "model.mog.components (--mog-components): Input should be greater than or equal to 1 (got 0)"),
    ({"kind": "vamp", "vamp": {"components": 0}},
     "model.vamp.components (--vamp-components): Input should be greater than or equal to 1 (got 0)"),
    ({"kind": "mog", "mog": {"spread": 0.0}}, "model.mog.spread (--mog-spread): Input should be greater than 0"),
    ({"kind": "mog", "mog": {"components": 1, "learn_weights": True}},
     "learn_weights has no effect with components = 1 (the one weight is 1); give components >= 2, or drop "
     "learn_weights"),
    ({"kind": "vamp", "vamp": {"link": "tanh"}}, "model.vamp.link (--vamp-link): Input should be 'auto', 'hardtanh' or "
     "'identity'"),
    ({"kind": "vae", "vamp": {"components": 3}}, "it applies only to --model vamp, and the model is vae"),
    ({"kind": "mog", "vamp": {"components": 3}}, "it applies only to --model vamp, and the model is mog"),
])
def test_bad_options_are_refused_with_a_message(model, message):
    config = RunConfig.from_dict({"model": model})
    with pytest.raises(ConfigError) as err:
        build_model(config.model, x_dim=2)
    assert message in str(err.value)


def test_one_mog_component_without_learn_weights_is_fine():
    model = _build("mog", mog={"components": 1})
    with torch.no_grad():
        assert model.prior().mixture_distribution.probs.tolist() == [1.0]


# -- conditions, sampling, save -> load -------------------------------------------------------------


def test_a_conditional_mog_samples_one_z_per_condition_row_from_its_one_prior():
    model = _build("mog", cond_dim=3, latent_dim=2)
    c = torch.eye(3)[torch.arange(6) % 3]  # (6, 3)
    with torch.no_grad():
        assert model.prior(c).batch_shape == ()  # p(z) is the same for every c
    x = model.sample(6, c, generator=_gen(0))
    assert x.shape == (6, 2) and torch.isfinite(x).all()
    torch.testing.assert_close(x, model.sample(6, c, generator=_gen(0)), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["vamp", "mog"])
def test_save_load_gives_identical_outputs(kind, tmp_path):
    model = _build(kind, latent_dim=2)
    _jiggle(model)
    with torch.no_grad():
        model.prior()  # a cached p(z) in the saved model must not leak into the loaded one
    cfg = tiny_config(model={"kind": kind, "latent_dim": 2})
    ckpt.save(tmp_path / "run", model, cfg)
    loaded = ckpt.load(tmp_path / "run").model.eval()
    assert type(loaded) is type(model)
    z = torch.randn(20, 2, generator=_gen(4))
    x = torch.randn(8, 2, generator=_gen(5))
    with torch.no_grad():
        torch.testing.assert_close(loaded.prior().log_prob(z), model.prior().log_prob(z), rtol=0, atol=0)
        torch.testing.assert_close(iwae_bound(loaded, x, k=4, generator=_gen(6)),
                                   iwae_bound(model, x, k=4, generator=_gen(6)), rtol=0, atol=0)
    torch.testing.assert_close(loaded.sample(9, generator=_gen(1)), model.sample(9, generator=_gen(1)), rtol=0, atol=0)


def test_the_families_are_built_in():
    assert isinstance(_build("vamp"), VampVAE) and isinstance(_build("mog"), MixtureOfGaussiansVAE)
    for kind in ("vamp", "mog"):
        assert not _build(kind).prior_is_standard_normal


# -- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "flags"), [
    ("vamp", ["--vamp-components", "6"]),
    ("mog", ["--mog-components", "3", "--mog-learn-weights", "false"]),
])
def test_cli_trains_samples_evaluates_and_plots_a_run(kind, flags, tmp_path):
    run = tmp_path / "run"
    cli_ok("train", "--data", "ring", "--n-train", "200", "--n-test", "100", "--hidden", "16,16", "--epochs", "2",
           "--batch-size", "64", "--eval-k", "8", "--device", "cpu", "--no-report", "--model", kind, *flags,
           "--out", run)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["kind"] == kind and config["model"][kind]["components"] == int(flags[1])
    loaded = ckpt.load(run).model
    assert loaded.components == int(flags[1])
    if kind == "mog":
        assert "prior_logits" not in dict(loaded.named_parameters())  # --mog-learn-weights false: a buffer
    cli_ok("sample", run, "-n", 7, "--out", tmp_path / "s.npy", "--seed", 3)
    import numpy as np

    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (7, 2) and np.isfinite(samples).all()
    result = cli_ok("eval", run, "--k", "4", "--json")
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert math.isfinite(metrics["iwae_nll"]) and metrics["kl_estimator"].startswith("Monte Carlo")
    figures = "prior_mixture,vamp_pseudo_inputs"
    result = cli_ok("plot", run, "--figures", figures)
    drawn = sorted(p.stem for p in (run / "figures").glob("*.png"))
    assert drawn == (["prior_mixture", "vamp_pseudo_inputs"] if kind == "vamp" else ["prior_mixture"])
    if kind == "mog":
        assert "no pseudo-inputs" in " ".join(result.output.split())
