"""Named terms: whatever an objective returns reaches StepInfo, the history, history.csv and the report."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from helpers import tiny_config
from vaelab.checkpoint import History
from vaelab.errors import InputError
from vaelab.models import VAE, build_model, family, register_family
from vaelab.objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    elbo,
    get_objective,
    objective_name,
    register_objective,
)
from vaelab.report import history_table
from vaelab.train import fit


def _elbo_with_entropy(model, x, c=None, *, beta=1.0, generator=None) -> ObjectiveOutput:
    """The ELBO, reporting the posterior entropy H[q(z|x)] as one more term (it changes no loss)."""
    out = elbo(model, x, c, beta=beta, generator=generator)
    return ObjectiveOutput(out.loss, {**out.terms, "entropy": model.encode(x, c).entropy().mean()}, out.elbo)


class EntropyVAE(VAE):
    default_objective: ClassVar[str] = "elbo_entropy"
    objectives: ClassVar[tuple[str, ...]] = ("elbo_entropy",)


@pytest.fixture
def entropy_family():
    register_objective(Objective("elbo_entropy", _elbo_with_entropy))
    register_family("entropyvae", EntropyVAE)
    yield
    OBJECTIVES.pop("elbo_entropy")
    from vaelab.models import FAMILIES

    FAMILIES.pop("entropyvae")


def test_every_term_reaches_step_info_history_csv_and_report(entropy_family):
    cfg = tiny_config(model={"kind": "entropyvae"}, train={"epochs": 2})
    model = build_model(cfg.model, 2, seed=0)
    assert objective_name(model, cfg.train) == "elbo_entropy"  # the family's own, not train.objective (iwae)
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    steps = []
    history = fit(model, x, cfg.train, on_step=steps.append)
    assert set(steps[0].terms) == {"recon", "kl", "entropy"}
    assert steps[0].recon == steps[0].terms["recon"] and steps[0].kl == steps[0].terms["kl"]
    assert history.columns[-1] == "entropy" and len(history.column("entropy")) == 2
    assert history.column("entropy")[0] != history.column("kl")[0]
    again = History.from_csv(history.to_csv())
    assert again.columns == history.columns
    assert again.column("entropy") == history.column("entropy")
    assert "<th>entropy</th>" in history_table(history)


def test_a_history_without_extra_terms_keeps_the_fixed_columns():
    text = "epoch,step,loss,recon,kl,diversity,seconds\n1,4,3.5,3.0,0.5,1.0,0.1\n"  # a 0.1.0 history.csv
    h = History.from_csv(text)
    assert h.columns == History.COLUMNS and h.column("kl") == [0.5]


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(InputError, match="unknown objective 'nope'; choose one of: elbo, iwae, ae"):
        get_objective("nope")
    with pytest.raises(InputError, match="unknown model family 'nope'; choose one of: vae, ae"):
        family("nope")
    with pytest.raises(InputError, match="already registered"):
        register_family("vae", EntropyVAE)


def test_a_variational_objective_refuses_a_model_without_a_posterior():
    cfg = tiny_config(model={"kind": "ae"})
    model = build_model(cfg.model, 2, seed=0)
    with pytest.raises(InputError, match="needs a model with q\\(z\\|x\\).*use objective 'ae'"):
        get_objective("elbo")(model, torch.zeros(4, 2))
