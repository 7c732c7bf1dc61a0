"""Every setting does what it says: it changes what is trained / evaluated, or it is refused.

``test_every_field_has_a_case`` walks the pydantic fields of every config section, so a new
field without a rule and a case here fails the suite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vaelab.config import (
    SECTIONS,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from vaelab.data.registry import load_dataset
from vaelab.evaluate import evaluate
from vaelab.models import build_model
from vaelab.presets import PRESETS, apply_preset
from vaelab.settings import SETTING_RULES, check_settings
from vaelab.train import fit, train_run

SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
ALL_FIELDS = [f"{s}.{f}" for s in SECTIONS for f in SECTION_CLASSES[s].model_fields]


def small(**sections: dict[str, Any]) -> RunConfig:
    """A config that trains in a fraction of a second; only the fields given here count as set.

    The small sizes are added only where they apply, so they never trigger a refusal.
    """
    given = {k: dict(v) for k, v in sections.items()}
    data, model, train = given.get("data", {}), given.get("model", {}), given.get("train", {})
    base: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {"batch_size": 32, "diversity_samples": 16},
                                       "eval": {}}
    if data.get("path") is None and data.get("name", "ring") in ("ring", "moons"):
        base["data"] = {"name": "ring", "n_train": 64, "n_test": 32}
    if model.get("net", "mlp") == "mlp":
        base["model"]["hidden"] = [8]
    if "steps" not in train:
        base["train"]["epochs"] = 1
    for key, values in given.items():
        base[key].update(values)
    return RunConfig.from_dict(base)


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "points.csv"
    rng = np.random.default_rng(0)
    rows = ["a,b,c,y"] + [f"{u:.4f},{v:.4f},{w:.4f},{i % 2}" for i, (u, v, w) in
                          enumerate(rng.normal(size=(80, 3)))]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


# --- what a setting changes ------------------------------------------------------------------

def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(str(tuple(t.shape)).encode())
    return h.hexdigest()


def data_outcome(cfg: RunConfig, _: Path) -> str:
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    labels = [d.labels for d in (train, test) if d.labels is not None]
    return _digest(train.x, test.x, *labels)


def model_outcome(cfg: RunConfig, _: Path) -> str:
    """Parameters and the distributions of a fixed input under the seeded initial model."""
    x_dim = 64 if cfg.model.net == "conv" else 2
    cond = 1 if cfg.data.condition == "radius" else 0
    model = build_model(cfg.model, x_dim, cond, seed=0, cond_embed=cfg.model.cond_embed if cond else ())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, x_dim, generator=g)
    c = torch.ones(5, 1) if cond else None
    z = model.embed(x, c)
    p_x = model.decode(z, c)
    parts = [*model.state_dict().values(), z, p_x.log_prob(x)]
    if cfg.model.kind == "vae":
        parts.append(model.encode(x, c).base_dist.scale)
    return _digest(*parts)


def train_outcome(cfg: RunConfig, tmp: Path) -> str:
    out = tmp / f"run{len(list(tmp.iterdir()))}"
    run = train_run(cfg, out)
    hist = torch.tensor([[r[k] for k in ("step", "loss", "diversity")] for r in run.history.rows])
    return _digest(*run.model.state_dict().values(), hist)


def checkpoint_outcome(cfg: RunConfig, _: Path) -> str:
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, 2, seed=0)
    epochs: list[int] = []
    fit(model, data.x, cfg.train, on_checkpoint=lambda m, h, s: epochs.append(s.epoch))
    return str(epochs)


def divergence_outcome(cfg: RunConfig, tmp: Path) -> str:
    """Where a run with a far too large learning rate ends: stopped at a step, or trained on."""
    from vaelab.train import TrainingDiverged

    try:
        run = train_run(cfg, tmp / f"run{len(list(tmp.iterdir()))}")
    except TrainingDiverged as err:
        return f"stopped at step {err.step}"
    return "trained: " + json.dumps([[r.get("step"), r.get("skipped")] for r in run.history.rows])


def eval_outcome(cfg: RunConfig, _: Path) -> str:
    model = build_model(cfg.model, 2, seed=0)
    m = evaluate(model, load_dataset(cfg.data, "test"), k=cfg.eval.k, batch_size=cfg.eval.batch_size,
                 seed=cfg.eval.seed)
    return json.dumps(m, sort_keys=True)


# field -> (where it applies: overrides, its new value, the outcome it changes) or None when the
# effect needs files this machine does not have; and where it does not apply: overrides, a value.
Case = tuple[dict[str, Any] | None, Any, Any, dict[str, Any] | None, Any]
CSV = "<csv>"
CASES: dict[str, Case] = {
    "data.name": ({}, "moons", data_outcome, {"data": {"path": CSV}}, "moons"),
    "data.path": ({}, CSV, data_outcome, None, None),
    "data.label_column": ({"data": {"path": CSV}}, "y", data_outcome, {}, "y"),
    "data.condition": ({}, "radius", train_outcome, None, None),
    "data.n_train": ({}, 100, data_outcome, {"data": {"path": CSV}}, 100),
    "data.n_test": ({}, 50, data_outcome, {"data": {"path": CSV}}, 50),
    "data.test_fraction": ({"data": {"path": CSV}}, 0.3, data_outcome, {}, 0.3),
    "data.seed": ({}, 5, data_outcome, {"data": {"name": "mnist"}}, 5),
    "data.data_dir": (None, None, None, {}, "/tmp/somewhere"),
    "data.image_split": (None, None, None, {}, "test-9k"),
    "data.image_size": (None, None, None, {}, 16),
    "data.binarize": ({"data": {"name": "digits8", "limit_train": 64, "limit_test": 32}}, "fixed", train_outcome,
                      {}, "fixed"),
    "data.limit_train": ({}, 40, data_outcome, None, None),
    "data.limit_test": ({}, 20, data_outcome, None, None),
    "model.kind": ({}, "ae", model_outcome, None, None),
    "model.net": ({}, "conv", model_outcome, None, None),
    "model.channels": ({"model": {"net": "conv"}}, [4, 4], model_outcome, {}, [4, 4]),
    "model.hidden": ({}, [16], model_outcome, {"model": {"net": "conv"}}, [16]),
    "model.activation": ({}, "relu", model_outcome, None, None),
    "model.latent_dim": ({}, 3, model_outcome, None, None),
    "model.scale": ({}, "softplus", model_outcome, {"model": {"kind": "ae"}}, "softplus"),
    "model.likelihood": ({}, "gaussian", model_outcome, None, None),
    "model.recon_var": ({"model": {"likelihood": "gaussian"}}, 0.5, model_outcome, {}, 0.5),
    "model.cond_embed": ({"data": {"condition": "radius"}}, [4], model_outcome, {"data": {"condition": "label"}},
                         [4]),
    "model.output_bias": ({"data": {"name": "digits8", "limit_train": 64, "limit_test": 32},
                           "model": {"likelihood": "bernoulli"}}, "data-mean", train_outcome, {}, "data-mean"),
    "model.min_var": ({}, 10.0, model_outcome, {"model": {"likelihood": "bernoulli"}}, 1e-3),
    "train.objective": ({}, "elbo", train_outcome, {"model": {"kind": "ae"}}, "elbo"),
    "train.beta": ({}, 4.0, train_outcome, {"model": {"kind": "ae"}}, 4.0),
    "train.k": ({}, 2, train_outcome, {"train": {"objective": "elbo"}}, 2),
    "train.lr": ({}, 1e-2, train_outcome, None, None),
    "train.lr_schedule": ({}, "constant", train_outcome, None, None),
    "train.adam_betas": ({}, [0.5, 0.9], train_outcome, None, None),
    "train.adam_eps": ({}, 1e-2, train_outcome, None, None),
    "train.epochs": ({}, 2, train_outcome, {"train": {"steps": 3}}, 2),
    "train.steps": ({}, 1, train_outcome, None, None),
    "train.batch_size": ({}, 16, train_outcome, None, None),
    "train.seed": ({}, 7, train_outcome, None, None),
    "train.checkpoint_every": ({"train": {"epochs": 4}}, 2, checkpoint_outcome, None, None),
    "train.diversity_samples": ({}, 32, train_outcome, None, None),
    "train.nonfinite": ({"train": {"lr": 1e3, "steps": 6}}, "skip", divergence_outcome, None, None),
    "train.max_skips": ({"train": {"lr": 1e3, "steps": 6, "nonfinite": "skip"}}, 1, divergence_outcome,
                        {"train": {"nonfinite": "stop"}}, 3),
    "train.grad_clip": ({}, 1e-3, train_outcome, None, None),
    # the compiled step's weights equal eager's only up to float rounding (tests/test_train_speed.py)
    "train.compile": ({"train": {"steps": 4}}, True, train_outcome, None, None),
    # training aids: warm-up lengths need --beta-schedule warmup, whose own case needs a length, so
    # their effect on training is shown in tests/test_schedules.py
    "train.beta_schedule": ({"train": {"steps": 8}}, "cyclical", train_outcome, {"model": {"kind": "ae"}},
                            "cyclical"),
    "train.warmup_epochs": (None, None, None, {}, 2),
    "train.warmup_steps": (None, None, None, {"train": {"beta_schedule": "cyclical"}}, 2),
    "train.cycles": ({"train": {"beta_schedule": "cyclical", "steps": 8}}, 2, train_outcome, {}, 2),
    "train.cycle_ratio": ({"train": {"beta_schedule": "cyclical", "steps": 8}}, 1.0, train_outcome,
                          {}, 0.25),
    # without a named objective free bits make a β-VAE, which trains the β-ELBO (issue 20)
    "train.free_bits": ({"train": {"objective": "elbo"}}, 0.5, train_outcome, {"train": {"objective": "iwae"}}, 0.5),
    "train.free_bits_group": ({"train": {"objective": "elbo", "free_bits": 0.5}}, "all", train_outcome,
                              {"train": {"objective": "elbo"}}, "all"),
    "eval.k": ({}, 8, eval_outcome, {"model": {"kind": "ae"}}, 8),
    "eval.batch_size": ({}, 7, eval_outcome, None, None),
    "eval.seed": ({}, 3, eval_outcome, {"model": {"kind": "ae"}}, 3),
}


def _with(overrides: dict[str, Any], dotted: str, value: Any, csv: str) -> RunConfig:
    section, field = dotted.split(".")
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in overrides.items()}
    sections.setdefault(section, {})[field] = value
    for values in sections.values():
        for key, v in values.items():
            if v == CSV:
                values[key] = csv
    return small(**sections)


def test_every_field_has_a_rule_and_a_case():
    missing_rule = [f for f in ALL_FIELDS if f not in SETTING_RULES]
    missing_case = [f for f in ALL_FIELDS if f not in CASES]
    assert not missing_rule, f"add a rule to vaelab.settings.SETTING_RULES for {missing_rule}"
    assert not missing_case, f"add a case to tests/test_settings.py CASES for {missing_case}"
    for field, (applies, _, _, refused, _) in CASES.items():
        assert applies is not None or refused is not None, field


@pytest.mark.parametrize("field", sorted(f for f in CASES if CASES[f][0] is not None))
def test_a_setting_changes_the_outcome_where_it_applies(field, csv_file, tmp_path):
    context, value, outcome, _, _ = CASES[field]
    base = _with(context, "train.seed", 0, csv_file)  # the same context without the setting
    given = _with(context, field, value, csv_file)
    check_settings(given)  # it applies here
    assert field in given.user_settings()
    assert outcome(given, tmp_path) != outcome(base, tmp_path), f"{field}={value!r} changed nothing"


@pytest.mark.parametrize("field", sorted(f for f in CASES if CASES[f][3] is not None))
def test_a_setting_that_would_change_nothing_is_refused(field, csv_file, tmp_path):
    _, _, _, context, value = CASES[field]
    try:
        cfg = _with(context, field, value, csv_file)
    except ConfigError as err:  # refused as soon as the config is built (a rule between fields)
        assert field.split(".")[1] in str(err) and "remove it" in str(err), str(err)
        return
    if field == "data.binarize":  # refused by the values of the data once they are read
        with pytest.raises(ValueError, match="binarize=fixed .* needs x in \\[0, 1\\].*use --binarize none"):
            train_run(cfg, tmp_path / "r")
        assert not (tmp_path / "r").exists()
        return
    with pytest.raises(ConfigError, match=rf"{field} \((--|\[)") as err:  # the field and its flag
        check_settings(cfg)
    assert any(word in str(err.value) for word in ("use", "drop", "give", "add")), str(err.value)
    # the same through train_run: refused before anything is written
    with pytest.raises(ConfigError):
        train_run(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_defaults_and_presets_never_trigger_a_refusal():
    check_settings(RunConfig())
    for name in PRESETS:
        cfg = apply_preset(RunConfig(), name)
        assert cfg.user_settings() == []
        check_settings(cfg)
        # every preset is itself consistent: all its fields would apply if the user gave them
        given = RunConfig().with_overrides(PRESETS[name][1] | {"data": {"name": "mnist", **PRESETS[name][1]["data"]}})
        check_settings(given)


def test_with_overrides_keeps_what_the_user_set():
    cfg = RunConfig.from_dict({"model": {"hidden": [8]}})
    assert cfg.user_settings() == ["model.hidden"]
    cfg = cfg.with_overrides({"train": {"beta": 2.0, "k": None}})
    assert cfg.user_settings() == ["model.hidden", "train.beta"]
    # a preset below the user's settings does not count as theirs; a flag over it does
    cfg = apply_preset(RunConfig(), "mnist-conv").with_overrides({"model": {"hidden": [8]}})
    assert cfg.model.net == "conv" and cfg.user_settings() == ["model.hidden"]
    with pytest.raises(ConfigError, match=r"model.hidden \(--hidden\)"):
        check_settings(cfg)


def test_lambda_rec_over_a_preset_replaces_its_recon_var():
    cfg = apply_preset(RunConfig(), "mnist-mlp-gaussian").with_overrides({"model": {"lambda_rec": 4}})
    assert cfg.model.recon_var == 0.25 and cfg.user_settings() == ["model.recon_var"]


# --- strict types and seeds (audit T74, A33c, T52, T53, E08, S09, D07, P16) -----------------------

@pytest.mark.parametrize("section,field,value", [
    ("train", "epochs", True), ("train", "epochs", 2.0), ("train", "lr", "1e-3"), ("model", "latent_dim", "2"),
    ("data", "n_train", False), ("model", "hidden", [True]),
])
def test_strict_types_refuse_bools_and_strings(section, field, value):
    with pytest.raises(ConfigError, match=f"{section}.{field}"):
        RunConfig.from_dict({section: {field: value}})


def test_assignment_of_a_bool_is_refused():
    cfg = RunConfig()
    with pytest.raises(ValueError):
        cfg.train.epochs = True
    assert cfg.train.epochs == TrainConfig.model_fields["epochs"].default


@pytest.mark.parametrize("section", ["data", "train", "eval"])
def test_seeds_beyond_64_bits_are_refused_at_config_time(section):
    for ok in (-1, 2**63 - 1, -(2**63)):
        RunConfig.from_dict({section: {"seed": ok}})
    with pytest.raises(ConfigError, match=rf"{section}.seed: seeds are 64-bit integers"):
        RunConfig.from_dict({section: {"seed": 2**80}})


def test_largest_seed_trains(tmp_path):
    run = train_run(small(train={"seed": 2**63 - 1}, data={"seed": 2**63 - 1}), tmp_path / "r")
    assert run.history.last is not None


def test_train_run_refuses_what_is_not_a_config(tmp_path):
    """Audit A31: train_run(dict) raised AttributeError 'dict' object has no attribute 'data'."""
    with pytest.raises(ConfigError, match="RunConfig"):
        train_run({"train": {"epochs": 1}}, tmp_path / "r")
    assert not (tmp_path / "r").exists()
