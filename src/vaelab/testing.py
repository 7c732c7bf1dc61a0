"""The model contract as plain checks: the suite every built-in family passes, for a family of your own.

Call it from a test of your own project (pytest or any runner: a failed check raises
``AssertionError`` saying what broke; this module does not need pytest)::

    from vaelab.testing import check_family
    from mypkg.families import MixPriorVAE

    def test_mixprior_keeps_the_vaelab_contract(tmp_path):
        check_family(MixPriorVAE, name="mixprior", model={"latent_dim": 2, "mixprior": {"components": 3}},
                     folder=tmp_path)

``check_family`` runs every check that applies to the family (``CHECKS``; those marked
variational only where the model has an inference network q(z|x)); each check is also a
function of its own taking a ``Case`` (a family, its settings and the inputs' widths), which
is how vaelab's own suite (tests/models/test_contract.py) runs them over every built-in family:

- ``check_shapes``: embed, decode, reconstruct, prior, sample and encode give the shapes of the contract;
- ``check_save_load``: a saved and reloaded model gives identical outputs (the same class);
- ``check_generator``: the same ``torch.Generator`` seed gives the same output, another seed another one;
- ``check_rsample_gradients``: gradients reach the encoder through ``rsample``, and a learned prior;
- ``check_kl``: ``kl`` is the closed form where one exists (and a Monte Carlo estimate converges to it),
  else a Monte Carlo estimate that converges;
- ``check_iwae_one_sample``: IWAE with k = 1 equals the ELBO in expectation;
- ``check_sample_from_prior``: ``sample()`` decodes draws of ``prior()``;
- ``check_training_improves``: a short training run (vaelab's own loop) improves the held-out bound.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.distributions import Independent, Normal

from vaelab import checkpoint as ckpt
from vaelab.conditions.spec import Condition
from vaelab.config import RunConfig, TrainConfig
from vaelab.distributions import KLNeedsSamples, kl, kl_is_closed_form, rsample
from vaelab.models import FAMILIES, LatentModel, VariationalModel, build_model, has_normal_posterior, register_family
from vaelab.objectives import elbo, iwae, iwae_bound, resolve_objective


@dataclass(frozen=True)
class Case:
    """One model to check: the family ``kind`` with ``model`` settings, for data of width ``x_dim``
    and a one-hot condition of width ``cond_dim`` (0: unconditional).

    ``model`` is the rest of the ``[model]`` table (``latent_dim``, ``net``, a ``[model.NAME]``
    options table as ``{"NAME": {...}}``); small MLPs (16, 16) unless it says otherwise. ``data``
    is the ``[data]`` table recorded in the saved config (the checks draw their own inputs).
    With ``likelihood = "bernoulli"`` the inputs are 0/1.
    """

    kind: str
    model: Mapping[str, Any] = field(default_factory=dict)
    x_dim: int = 2
    cond_dim: int = 0
    data: Mapping[str, Any] | None = None
    id: str = ""

    def __str__(self) -> str:
        return self.id or self.kind

    def config(self) -> RunConfig:
        """The run configuration the model is built from and saved with."""
        model = {"kind": self.kind, **self.model}
        if "hidden" not in model and model.get("net", "mlp") == "mlp":
            model["hidden"] = [16, 16]
        data = {"name": "ring", **(self.data or {})}
        if self.cond_dim and "condition" not in data:
            data["condition"] = "label"
        return RunConfig.from_dict({"data": data, "model": model})

    def build(self, seed: int = 0) -> LatentModel:
        """The model, its weights a function of ``seed``, in eval mode."""
        return build_model(self.config().model, self.x_dim, self.cond_dim, seed=seed).eval()

    def inputs(self, n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (n, x_dim) uniform in [0, 1] (0/1 for a Bernoulli likelihood); c (n, cond_dim) one-hot, or None."""
        g = generator(seed)
        x = torch.rand(n, self.x_dim, generator=g)
        if self.model.get("likelihood") == "bernoulli":
            x = (x > 0.5).float()
        c = None
        if self.cond_dim:
            c = torch.nn.functional.one_hot(torch.arange(n) % self.cond_dim, self.cond_dim).float()
        return x, c

    def condition(self) -> Condition | None:
        """The condition spec a conditional run saves (labels "0" … "K-1")."""
        return Condition(kind="label", labels=[str(i) for i in range(self.cond_dim)]) if self.cond_dim else None


def generator(seed: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def _first(c: torch.Tensor | None) -> torch.Tensor | None:
    return None if c is None else c[:1]


def check_shapes(case: Case) -> None:
    """embed (B, d), decode batch (B,), reconstruct (B, D), prior event (d,), sample (n, D),
    encode batch (B,) event (d,), rsample (S, B, d)."""
    model = case.build()
    x, c = case.inputs()
    d = model.latent_dim
    assert model.embed(x, c).shape == (5, d), f"{case}: embed(x) should be (B, latent_dim) = (5, {d})"
    assert model.decode(torch.zeros(5, d), c).batch_shape == (5,), f"{case}: decode(z) should have batch shape (B,)"
    assert model.reconstruct(x, c).shape == (5, case.x_dim), f"{case}: reconstruct(x) should be (B, x_dim)"
    prior = model.prior(_first(c))
    assert prior.event_shape == (d,) and prior.batch_shape in ((), (1,)), \
        f"{case}: prior() should have event shape (latent_dim,) and batch shape () or (1,), got " \
        f"{tuple(prior.event_shape)} and {tuple(prior.batch_shape)}"
    assert model.sample(4, _first(c), generator=generator()).shape == (4, case.x_dim), \
        f"{case}: sample(n) should be (n, x_dim)"
    if isinstance(model, VariationalModel):
        q_z = model.encode(x, c)
        assert q_z.batch_shape == (5,) and q_z.event_shape == (d,), \
            f"{case}: encode(x) should have batch shape (B,) and event shape (latent_dim,)"
        assert rsample(q_z, (3,), generator()).shape == (3, 5, d), f"{case}: rsample(q, (S,)) should be (S, B, d)"


def check_save_load(case: Case, folder: str | Path | None = None) -> None:
    """Weights moved away from their initialisation, saved as a run and loaded back: the same
    class, and identical embeddings, samples and (variational) IWAE bounds. ``folder``: where
    the run is written (a temporary folder when None)."""
    model = case.build()
    with torch.no_grad():  # move every weight away from its seed-0 initialisation
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator(7)))
    with _folder(folder) as where:
        ckpt.save(where / "run", model, case.config(), condition=case.condition())
        loaded = ckpt.load(where / "run").model
    assert type(loaded) is type(model), f"{case}: loaded a {type(loaded).__name__}, saved a {type(model).__name__}"
    x, c = case.inputs()
    torch.testing.assert_close(loaded.embed(x, c), model.embed(x, c), rtol=0, atol=0,
                               msg=lambda m: f"{case}: embed differs after save -> load: {m}")
    torch.testing.assert_close(loaded.sample(6, _first(c), generator=generator(3)),
                               model.sample(6, _first(c), generator=generator(3)), rtol=0, atol=0,
                               msg=lambda m: f"{case}: sample differs after save -> load: {m}")
    if isinstance(model, VariationalModel):
        assert isinstance(loaded, VariationalModel)
        torch.testing.assert_close(iwae_bound(loaded, x, c, k=4, generator=generator(2)),
                                   iwae_bound(model, x, c, k=4, generator=generator(2)), rtol=0, atol=0,
                                   msg=lambda m: f"{case}: the IWAE bound differs after save -> load: {m}")


@contextmanager
def _folder(folder: str | Path | None) -> Iterator[Path]:
    if folder is not None:
        yield Path(folder)
        return
    with tempfile.TemporaryDirectory(prefix="vaelab-check-") as tmp:
        yield Path(tmp)


def check_generator(case: Case) -> None:
    """The same generator seed gives the same samples, stochastic reconstructions and IWAE loss;
    another seed gives other samples (and another loss)."""
    model = case.build()
    x, c = case.inputs()
    a, b = model.sample(6, _first(c), generator=generator(4)), model.sample(6, _first(c), generator=generator(4))
    assert torch.equal(a, b), f"{case}: sample() with the same generator seed gave different draws"
    assert not torch.equal(a, model.sample(6, _first(c), generator=generator(5))), \
        f"{case}: sample() ignores its generator (another seed gave the same draws)"
    r1 = model.reconstruct(x, c, generator=generator(4), stochastic=True)
    assert torch.equal(r1, model.reconstruct(x, c, generator=generator(4), stochastic=True)), \
        f"{case}: reconstruct(stochastic=True) with the same generator seed gave different outputs"
    if isinstance(model, VariationalModel):
        l1 = iwae(model, x, c, k=3, generator=generator(4)).loss
        assert torch.equal(l1, iwae(model, x, c, k=3, generator=generator(4)).loss), \
            f"{case}: the IWAE loss with the same generator seed differs (a draw uses the global RNG?)"
        q_z = model.encode(x, c)
        random_q = not torch.equal(rsample(q_z, (), generator(4)), rsample(q_z, (), generator(5)))
        # (a point-mass q(z|x), a VQ-VAE's, draws no noise: its IWAE loss rightly ignores the generator)
        assert not random_q or not torch.equal(l1, iwae(model, x, c, k=3, generator=generator(5)).loss), \
            f"{case}: the IWAE loss ignores its generator"


def check_rsample_gradients(case: Case) -> None:
    """Gradients reach the encoder through ``rsample(q(z|x))``; where p(z) is learned and
    reparameterisable, through ``rsample(p(z))`` to its parameters (those named ``prior_*``,
    else any)."""
    model = case.build()
    assert isinstance(model, VariationalModel), f"{case}: has no q(z|x) (not a VariationalModel)"
    x, c = case.inputs()
    z = rsample(model.encode(x, c), (2,), generator())
    assert z.requires_grad, f"{case}: rsample(q(z|x)) is not differentiable"
    z.square().sum().backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g is not None and float(g.abs().sum()) > 0 for g in grads), \
        f"{case}: no gradient reaches the encoder through rsample(q(z|x))"
    model.zero_grad()
    named = [p for name, p in model.named_parameters() if name.startswith("prior_") and p.requires_grad]
    z_p = rsample(model.prior(_first(c)), (16,), generator())
    if z_p.requires_grad:  # a learned prior: gradients reach it
        z_p.square().sum().backward()
        reached = named or list(model.parameters())
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in reached), \
            f"{case}: no gradient reaches the prior's parameters through rsample(p(z))"
    else:
        assert not named, f"{case}: the prior has learned parameters ({len(named)}), but rsample(p(z)) carries " \
                          "no gradient to them"


def check_kl(case: Case) -> None:
    """KL(q ‖ p) is the closed form where torch has one for the pair (and a Monte Carlo estimate
    agrees with it: for a Normal q and N(0, I), also the formula of Kingma & Welling), else
    ``kl`` asks for samples and its Monte Carlo estimate converges."""
    model = case.build()
    assert isinstance(model, VariationalModel), f"{case}: has no q(z|x) (not a VariationalModel)"
    x, c = case.inputs(n=3)
    with torch.no_grad():
        q_z, prior = model.encode(x, c), model.prior(c)
        z = rsample(q_z, (40_000,), generator(8))  # (n, 3, d)
        log_ratio = q_z.log_prob(z) - prior.log_prob(z)  # (n, 3): unbiased draws of the KL
        mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
        if has_normal_posterior(model) and model.prior_is_standard_normal:
            assert kl_is_closed_form(q_z, prior), f"{case}: a Normal q and N(0, I) should have a closed-form KL"
            mu, var = q_z.mean, q_z.variance  # KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − 1 − log σ²)
            closed = 0.5 * (mu.square() + var - 1 - var.log()).sum(-1)
            torch.testing.assert_close(kl(q_z, prior), closed, rtol=1e-5, atol=1e-6)
            assert (mc - closed).abs().max() < 5 * se.max() + 1e-4, \
                f"{case}: the Monte Carlo KL ({mc.tolist()}) does not converge to the closed form ({closed.tolist()})"
        elif kl_is_closed_form(q_z, prior):
            # A closed form registered for another pair (a categorical q(z|x) against a uniform
            # categorical prior): honest only if the Monte Carlo estimate converges to it.
            exact = kl(q_z, prior)
            assert exact.shape == mc.shape, f"{case}: the closed-form KL has shape {tuple(exact.shape)}, not " \
                                            f"{tuple(mc.shape)}"
            assert (mc - exact).abs().max() < 5 * se.max() + 1e-4, \
                f"{case}: the Monte Carlo KL ({mc.tolist()}) does not converge to the closed form ({exact.tolist()})"
        else:
            try:
                kl(q_z, prior)
            except KLNeedsSamples as err:
                assert "Monte Carlo" in str(err), f"{case}: KLNeedsSamples should say Monte Carlo: {err}"
            else:
                raise AssertionError(f"{case}: kl(q, p) without samples should raise KLNeedsSamples")
            torch.testing.assert_close(kl(q_z, prior, z), mc)  # averaged over the sample dim
            few = kl(q_z, prior, z[:100])
            assert (few - mc).abs().max() < 6 * se.max() * math.sqrt(len(z) / 100), \
                f"{case}: the Monte Carlo KL from 100 draws is far from that of 40,000"


def check_iwae_one_sample(case: Case) -> None:
    """IWAE with k = 1 is the ELBO in expectation (and with the same draw, when the KL is
    estimated by Monte Carlo, the same loss)."""
    model = case.build()
    assert isinstance(model, VariationalModel), f"{case}: has no q(z|x) (not a VariationalModel)"
    x, c = case.inputs(n=1)
    n = 20_000
    xs = x.expand(n, -1)
    cs = None if c is None else c.expand(n, -1)
    with torch.no_grad():
        bound = iwae_bound(model, xs, cs, k=1, generator=generator(9))  # (n,) one-sample estimates of L_1
        out = elbo(model, xs, cs, generator=generator(10))
        assert out.elbo is not None
        se = bound.std() / math.sqrt(n)
        assert abs(float(bound.mean() - out.elbo)) < 5 * float(se) + 1e-4, \
            f"{case}: the IWAE bound with k = 1 ({float(bound.mean()):.4f}) is not the ELBO ({float(out.elbo):.4f})"
        # With the same draw and β = 1, the IWAE k = 1 loss is exactly the Monte Carlo ELBO.
        c8 = None if cs is None else cs[:8]
        one = iwae(model, xs[:8], c8, k=1, generator=generator(11))
        mc_elbo = elbo(model, xs[:8], c8, generator=generator(11))
        if not kl_is_closed_form(model.encode(xs[:1], _first(cs)), model.prior(c)):
            torch.testing.assert_close(one.loss, mc_elbo.loss)


def check_sample_from_prior(case: Case) -> None:
    """With p(z) replaced by N(5, 0.01²), every code ``sample`` decodes is about 5: it draws from ``prior()``."""
    model = case.build()
    d = model.latent_dim
    shifted = Independent(Normal(torch.full((d,), 5.0), torch.full((d,), 0.01)), 1)
    model.prior = lambda c=None: shifted  # type: ignore[method-assign]
    seen: list[torch.Tensor] = []
    decode = model.decode

    def recording_decode(z: torch.Tensor, c: torch.Tensor | None = None) -> Any:
        seen.append(z)
        return decode(z, c)

    model.decode = recording_decode  # type: ignore[method-assign]
    _, c = case.inputs()
    model.sample(50, _first(c), generator=generator())
    assert seen, f"{case}: sample() never called decode()"
    assert seen[0].shape == (50, d), f"{case}: sample(50) decoded codes of shape {tuple(seen[0].shape)}"
    torch.testing.assert_close(seen[0].mean(0), torch.full((d,), 5.0), atol=0.01, rtol=0,
                               msg=lambda m: f"{case}: sample() does not decode draws of prior(): {m}")


def check_training_improves(case: Case, epochs: int = 8) -> None:
    """A short training run (vaelab's loop, the family's own objective, 256 points) improves the
    held-out IWAE bound (k = 8) of a variational model, or the training loss of any other."""
    from vaelab.train import fit  # the training loop: only this check needs it

    model = build_model(case.config().model, case.x_dim, case.cond_dim, seed=0)
    x, c = case.inputs(n=256, seed=1)
    x_test, c_test = case.inputs(n=128, seed=2)
    train = resolve_objective(TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, lr_schedule="constant",
                                          diversity_samples=64, checkpoint_every=epochs), type(model))

    def bound() -> float:
        assert isinstance(model, VariationalModel)
        with torch.no_grad():
            return float(iwae_bound(model.eval(), x_test, c_test, k=8, generator=generator(3)).mean())

    before = bound() if isinstance(model, VariationalModel) else None
    history = fit(model, x, train, c=c)
    losses = history.column("loss")
    assert all(math.isfinite(v) for v in losses), f"{case}: training gave a non-finite loss: {losses}"
    if before is not None:
        after = bound()
        assert after > before, f"{case}: {epochs} epochs of training did not improve the held-out IWAE bound " \
                               f"(k = 8): {before:.4f} before, {after:.4f} after"
    else:
        assert losses[-1] < losses[0], f"{case}: {epochs} epochs of training did not lower the loss: {losses}"


# name -> (check, whether it needs a q(z|x)); check_family runs them in this order.
CHECKS: dict[str, tuple[Callable[..., None], bool]] = {
    "shapes": (check_shapes, False),
    "save_load": (check_save_load, False),
    "generator": (check_generator, False),
    "rsample_gradients": (check_rsample_gradients, True),
    "kl": (check_kl, True),
    "iwae_one_sample": (check_iwae_one_sample, True),
    "sample_from_prior": (check_sample_from_prior, False),
    "training_improves": (check_training_improves, False),
}


def check_family(
    family: str | type[LatentModel], *, name: str | None = None, model: Mapping[str, Any] | None = None,
    x_dim: int = 2, cond_dim: int = 0, folder: str | Path | None = None, checks: list[str] | None = None,
) -> list[str]:
    """Run the contract checks on a family; returns the names of those run (``CHECKS`` order).

    ``family``: a registered name, or the class itself, registered for the checks as ``name``
    (default: the name it is registered as, else its lower-cased class name) and unregistered
    after unless it was registered so before.
    ``model``: other ``[model]`` settings (``latent_dim``, a ``{"NAME": {...}}`` options
    table ...); ``x_dim`` / ``cond_dim``: the widths of x and of a one-hot condition;
    ``folder``: where the save -> load check writes its run (a temporary folder when None);
    ``checks``: a subset of ``CHECKS`` (default: all that apply: the variational ones need a
    ``VariationalModel``).

    Raises:
        AssertionError: the first check that fails, saying what broke.
        KeyError: an unknown name in ``checks``.
    """
    unknown = [c for c in checks or [] if c not in CHECKS]
    if unknown:
        raise KeyError(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    with _registered(family, name) as kind:
        case = Case(kind, dict(model or {}), x_dim=x_dim, cond_dim=cond_dim)
        variational = isinstance(case.build(), VariationalModel)
        ran = []
        for check_name, (check, needs_posterior) in CHECKS.items():
            if (checks is not None and check_name not in checks) or (needs_posterior and not variational):
                continue
            check(case, folder) if check is check_save_load else check(case)
            ran.append(check_name)
        return ran


@contextmanager
def _registered(family: str | type[LatentModel], name: str | None) -> Iterator[str]:
    """The family's registered name; a class not registered yet is registered for the block only."""
    if isinstance(family, str):
        yield family
        return
    known = [n for n, cls in FAMILIES.items() if cls is family]
    kind = name or (known[0] if known else family.__name__.lower())
    if kind in known:
        yield kind
        return
    register_family(kind, family)
    try:
        yield kind
    finally:
        FAMILIES.pop(kind, None)


__all__ = ["CHECKS", "Case", "check_family", "check_generator", "check_iwae_one_sample", "check_kl",
           "check_rsample_gradients", "check_sample_from_prior", "check_save_load", "check_shapes",
           "check_training_improves", "generator"]
