"""Issue 20, "β and the objective": a run with β ≠ 1, a β schedule or free bits is a β-VAE and
trains the β-ELBO unless the user names an objective; the β-weighted IWAE stays available when
named, and every label says which objective a run trains with."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from vaelab.config import ConfigError, RunConfig, TrainConfig
from vaelab.models import AE, VAE, build_model
from vaelab.objectives import describe_loss, objective_name, requested_objective, resolve_objective
from vaelab.settings import check_settings
from vaelab.train.loop import fit


def _given(**train: object) -> TrainConfig:
    """A TrainConfig whose given fields are exactly ``train`` (as flags would set them)."""
    return RunConfig().with_overrides({"train": dict(train)}).train


@pytest.mark.parametrize("given", [{"beta": 4.0}, {"beta": 0.0}, {"free_bits": 0.5},
                                   {"beta_schedule": "cyclical", "steps": 8}])
def test_a_beta_vae_without_a_named_objective_trains_the_beta_elbo(given):
    train = _given(**given)
    assert objective_name(VAE, train) == "elbo"
    assert describe_loss(VAE, train).startswith("−β-ELBO")


def test_a_named_objective_is_kept_and_labelled_as_a_weighted_objective():
    train = _given(beta=4.0, objective="iwae")
    assert objective_name(VAE, train) == "iwae"
    assert describe_loss(VAE, train) == "−β-weighted IWAE (k = 4, β = 4; a bound only at β = 1)"
    # β = 1 keeps the default IWAE bound; the autoencoder keeps its own loss
    assert objective_name(VAE, _given()) == "iwae"
    assert objective_name(AE, _given(beta=4.0)) == "ae"


def test_a_saved_config_records_the_resolved_objective():
    resolved = resolve_objective(_given(beta=4.0), VAE)
    assert resolved.objective == "elbo" and "objective" in resolved.model_fields_set
    reloaded = RunConfig.from_dict({"train": resolved.model_dump()}).train  # as config.json is read
    assert objective_name(VAE, reloaded) == "elbo"
    assert requested_objective(_given(beta=4.0, objective="iwae")) == "iwae"


def test_k_with_a_beta_vae_is_refused_and_says_how_to_get_the_weighted_iwae():
    with pytest.raises(ConfigError, match="--objective iwae"):
        check_settings(RunConfig().with_overrides({"train": {"beta": 4.0, "k": 8}}))
    check_settings(RunConfig().with_overrides({"train": {"beta": 4.0, "k": 8, "objective": "iwae"}}))
    check_settings(RunConfig().with_overrides({"train": {"free_bits": 0.5}}))  # the β-ELBO has free bits
    with pytest.raises(ConfigError, match="free bits"):
        check_settings(RunConfig().with_overrides({"train": {"free_bits": 0.5, "objective": "iwae"}}))


def _trained(train: dict) -> torch.Tensor:
    cfg = tiny_config(train={"epochs": 1, "seed": 3, **train})
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    model = build_model(cfg.model, 2, seed=0)
    fit(model, x, cfg.train)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_beta_without_objective_trains_other_weights_than_the_weighted_iwae():
    default = _trained({"beta": 4.0})
    elbo = _trained({"beta": 4.0, "objective": "elbo"})
    weighted_iwae = _trained({"beta": 4.0, "objective": "iwae"})
    assert torch.equal(default, elbo)
    assert not torch.allclose(default, weighted_iwae)
