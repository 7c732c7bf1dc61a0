"""Conditional VAEs: the condition is used, survives save / load, and bad conditions are refused."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.conditions import (
    Condition,
    ConditionError,
    ConditionRangeWarning,
    conditioning_accuracy,
    fit_condition,
    label_classifier,
    parse_kind,
    radius_tracking,
    read_condition_file,
)
from vaelab.config import ConfigError, RunConfig
from vaelab.data.files import DataFileError, load_points
from vaelab.data.registry import load_dataset
from vaelab.data.toy2d import ring
from vaelab.evaluate import evaluate
from vaelab.models import build_model
from vaelab.train import train_run

FAST_TRAIN = {"batch_size": 100, "lr": 3e-3, "diversity_samples": 64, "checkpoint_every": 100}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Train the tiny nets here on one thread: with 32-unit layers, intra-op threads only add
    synchronisation, which costs 10x on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(data: dict, model: dict, train: dict) -> RunConfig:
    return RunConfig.from_dict({"data": data, "model": {"hidden": [32, 32], **model},
                                "train": {**FAST_TRAIN, **train}, "eval": {"k": 16}})


@pytest.fixture(scope="module")
def label_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ring VAE conditioned on the mode label (120 steps, a few seconds)."""
    cfg = _config({"name": "ring", "condition": "label", "n_train": 1000, "n_test": 200}, {}, {"epochs": 12})
    out = tmp_path_factory.mktemp("cond") / "ring-label"
    train_run(cfg, out)
    return out


@pytest.fixture(scope="module")
def radius_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A radial_gmm VAE conditioned on the radius ‖x‖. One latent dimension leaves room for the
    angle only, so the radius has to come from c (600 steps, a few seconds)."""
    cfg = _config({"name": "radial_gmm", "condition": "radius", "n_train": 1000, "n_test": 200},
                  {"latent_dim": 1, "likelihood": "gaussian", "recon_var": 0.05, "activation": "silu"},
                  {"epochs": 60, "objective": "elbo", "lr": 2e-3, "lr_schedule": "constant"})
    out = tmp_path_factory.mktemp("cond") / "radial-radius"
    train_run(cfg, out)
    return out


# -- the condition is used -------------------------------------------------------------------


def test_ring_samples_for_mode_k_fall_nearest_mode_k(label_run: Path) -> None:
    run = ckpt.load(label_run)
    train = load_dataset(run.config.data, "train")
    clf = label_classifier(train, load_dataset(run.config.data, "test"))
    assert clf.description.startswith("nearest mode")
    acc = conditioning_accuracy(run.model, run.condition, clf, n_per_class=200,
                                generator=torch.Generator().manual_seed(0))
    assert set(acc["per_class"]) == {f"mode {k}" for k in range(8)}
    for name, share in acc["per_class"].items():
        assert share >= 0.95, f"{name}: only {share:.2%} of its samples fall nearest its mode"
    # The same samples asked for the wrong mode would score ~0: the label, not luck, places them.
    wrong = run.condition.encode(torch.tensor([4]))
    x = run.model.sample(200, wrong, generator=torch.Generator().manual_seed(0))
    assert float((clf.predict(x) == 0).double().mean()) < 0.05


def test_mean_sample_radius_tracks_requested_radius(radius_run: Path) -> None:
    run = ckpt.load(radius_run)
    low, high = run.condition.low[0], run.condition.high[0]
    requested = [2.0, 2.5, 3.0, 3.5, 4.0]
    assert low < requested[0] and requested[-1] < high  # inside the training range
    track = radius_tracking(run.model, run.condition, requested, n=300, generator=torch.Generator().manual_seed(0))
    means = np.array(track["mean_radius"])
    assert np.all(np.diff(means) > 0.2), f"mean radius does not rise with the requested one: {means}"
    assert np.all(np.abs(means - np.array(requested)) < 0.25), f"requested {requested}, got {means}"


def test_radius_tracking_measures_noisy_samples_beside_the_means(radius_run: Path) -> None:
    """Decoder means and samples x ~ p(x|z, c) are both measured (they can disagree), and labelled."""
    from vaelab.report import metrics_table

    run = ckpt.load(radius_run)
    requested = [2.0, 3.0, 4.0]
    track = radius_tracking(run.model, run.condition, requested, n=300, generator=torch.Generator().manual_seed(0))
    means_only = radius_tracking(run.model, run.condition, requested, n=300,
                                 generator=torch.Generator().manual_seed(0))
    assert track["mean_radius"] == means_only["mean_radius"]  # drawn first: the decoder-mean numbers are unchanged
    # The samples carry the decoder's noise (σ² = 0.05 per coordinate): their radius spreads wider
    # than the means' by about σ² in variance, which decoder means alone would not show.
    extra = np.array(track["sample_std_radius"]) ** 2 - np.array(track["std_radius"]) ** 2
    assert 0.02 < float(extra.mean()) < 0.1, extra
    assert np.all(np.abs(np.array(track["sample_mean_radius"]) - np.array(requested)) < 0.3)
    assert track["sample_mean_abs_error"] == pytest.approx(
        np.mean(np.abs(np.array(track["sample_mean_radius"]) - np.array(requested))))
    html = metrics_table({"condition": "radius", "radius_tracking": track})
    assert "mean ‖x‖ of decoder means E[x|z, c]" in html and "mean ‖x‖ of samples x ~ p(x|z, c) (with noise)" in html


def test_conditional_evaluation_uses_the_test_conditions(label_run: Path) -> None:
    run = ckpt.load(label_run)
    test = load_dataset(run.config.data, "test")
    c = run.condition.tensor(test)
    assert c.shape == (len(test), 8) and torch.equal(c.argmax(1), test.labels)
    metrics = evaluate(run.model, test, k=16, c=c)
    assert np.isfinite(metrics["elbo"]) and np.isfinite(metrics["iwae_nll"])
    # Telling the model the wrong mode makes the test points much less likely: c matters.
    shifted = run.condition.encode((test.labels + 4) % 8)
    assert evaluate(run.model, test, k=16, c=shifted)["iwae_nll"] > metrics["iwae_nll"] + 1.0
    with pytest.raises(ValueError, match="conditional"):
        evaluate(run.model, test, k=4)


# -- save / load -----------------------------------------------------------------------------


def test_save_load_keeps_label_list_and_weights(label_run: Path) -> None:
    run = ckpt.load(label_run)
    saved = json.loads((label_run / ckpt.CONDITION_FILE).read_text())
    assert saved == {"kind": "label", "labels": [f"mode {k}" for k in range(8)]}
    assert run.config.data.condition == "label"
    assert run.model.cond_dim == 8 and run.model.cond_embed == ()  # one-hot: no embedding
    again = ckpt.load(label_run)
    c = again.condition.encode(again.condition.parse(["mode 3"]))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(run.model.sample(50, c, generator=g1), again.model.sample(50, c, generator=g2))


def test_save_load_keeps_range_and_embedding(radius_run: Path, tmp_path: Path) -> None:
    run = ckpt.load(radius_run)
    cond = run.condition
    assert cond.kind == "radius" and cond.names == ["radius"] and cond.embed == [16, 16]
    train = load_dataset(run.config.data, "train")
    radius = train.extras["radius"].double()
    assert cond.low[0] == pytest.approx(float(radius.min()), rel=1e-6)
    assert cond.high[0] == pytest.approx(float(radius.max()), rel=1e-6)
    assert cond.mean[0] == pytest.approx(float(radius.mean()), rel=1e-6)
    assert cond.std[0] == pytest.approx(float(radius.std()), rel=1e-6)
    assert run.model.cond_embed == (16, 16)
    assert any(k.startswith("cond_net.") for k in run.model.state_dict())
    # The embedding MLP was trained: its weights differ from a fresh initialisation.
    fresh = build_model(run.config.model, 2, 1, seed=run.config.train.seed, cond_embed=(16, 16))
    assert not torch.equal(fresh.state_dict()["cond_net.0.0.weight"], run.model.state_dict()["cond_net.0.0.weight"])
    # Saving and loading again reproduces the samples exactly.
    ckpt.save(tmp_path / "copy", run.model, run.config, condition=cond)
    copy = ckpt.load(tmp_path / "copy")
    c = cond.encode(torch.tensor([[3.0]]))
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(run.model.sample(20, c, generator=g1), copy.model.sample(20, c, generator=g2))
    assert copy.condition == cond


def test_load_refuses_condition_file_that_does_not_fit(label_run: Path, tmp_path: Path) -> None:
    run = ckpt.load(label_run)
    bad = Condition(kind="label", labels=["a", "b", "c"])
    ckpt.save(tmp_path / "r", run.model, run.config, condition=bad)
    with pytest.raises(ckpt.RunDirError, match="width 3.*expect 8"):
        ckpt.load(tmp_path / "r")
    (tmp_path / "r" / ckpt.CONDITION_FILE).unlink()
    with pytest.raises(ckpt.RunDirError, match="conditional"):
        ckpt.load(tmp_path / "r")


def test_resume_keeps_the_saved_condition(tmp_path: Path) -> None:
    cfg = _config({"name": "ring", "condition": "radius", "n_train": 300, "n_test": 100}, {}, {"epochs": 2})
    first = train_run(cfg, tmp_path / "r")
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 4})})
    resumed = train_run(more, tmp_path / "r", resume=True)
    assert resumed.history.last["epoch"] == 4
    assert resumed.condition == first.condition


# -- bad conditions ----------------------------------------------------------------------------


@pytest.fixture
def ring_label() -> Condition:
    return fit_condition("label", ring(200, generator=torch.Generator().manual_seed(0)))


@pytest.fixture
def ring_radius() -> Condition:
    return fit_condition("radius", ring(200, generator=torch.Generator().manual_seed(0)))


def test_labels_parse_by_name_or_index(ring_label: Condition) -> None:
    assert ring_label.parse(["mode 3", "3", 3, "0"]).tolist() == [3, 3, 3, 0]
    c = ring_label.encode(ring_label.parse(["mode 7"]))
    assert c.shape == (1, 8) and c[0, 7] == 1 and c.sum() == 1


@pytest.mark.parametrize("value", ["9", "-1", "mode 8", "2.5", "seven"])
def test_unknown_label_is_refused_with_the_known_labels(ring_label: Condition, value: str) -> None:
    with pytest.raises(ConditionError, match=r"unknown label .*trained on 8 labels.*mode 7"):
        ring_label.parse([value])


def test_label_indices_out_of_range_are_refused(ring_label: Condition) -> None:
    with pytest.raises(ConditionError, match="unknown label index 8"):
        ring_label.encode(torch.tensor([0, 8]))
    with pytest.raises(ConditionError, match="integer label indices"):
        ring_label.encode(torch.tensor([0.0, 1.0]))


def test_continuous_condition_of_wrong_width_or_not_a_number(ring_radius: Condition) -> None:
    with pytest.raises(ConditionError, match="has 2 value.*has 1 per point"):
        ring_radius.parse(["1.0,2.0"])
    with pytest.raises(ConditionError, match="not a number"):
        ring_radius.parse(["mode 3"])
    with pytest.raises(ConditionError, match="1 value"):
        ring_radius.encode(torch.ones(4, 3))
    with pytest.raises(ConditionError, match="finite"):
        ring_radius.parse(["nan"])


def test_far_outside_training_range_warns_then_samples(ring_radius: Condition) -> None:
    low, high = ring_radius.low[0], ring_radius.high[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the range: no warning at all
        ring_radius.parse([str((low + high) / 2), str(high)])
    with pytest.warns(ConditionRangeWarning, match=r"far outside the training range \(radius in \["):
        raw = ring_radius.parse(["10"])
    assert raw.tolist() == [[10.0]]  # the value is still returned: sampling goes on
    model = build_model(RunConfig().model, 2, 1, seed=0, cond_embed=(16, 16))
    assert model.sample(5, ring_radius.encode(raw)).shape == (5, 2)


def test_unknown_condition_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown condition 'colour'"):
        RunConfig.from_dict({"data": {"condition": "colour"}})
    assert parse_kind(" column: a , b ") == ("column:a,b", ["a", "b"])


def test_condition_that_the_data_does_not_have(tmp_path: Path) -> None:
    np.savetxt(tmp_path / "p.csv", np.random.default_rng(0).normal(size=(40, 2)), delimiter=",",
               header="a,b", comments="")
    points = load_points(tmp_path / "p.csv")
    with pytest.raises(ConditionError, match="no labels to condition on.*--label-column"):
        fit_condition("label", points)
    with pytest.raises(ConditionError, match="no condition column"):
        fit_condition("column:t", points)


def test_model_refuses_missing_or_unexpected_condition() -> None:
    model = build_model(RunConfig().model, 2, 0, seed=0)
    with pytest.raises(ValueError, match="without a condition"):
        model.encode(torch.zeros(3, 2), torch.zeros(3, 1))
    cond_model = build_model(RunConfig().model, 2, 8, seed=0)
    with pytest.raises(ValueError, match="is conditional"):
        cond_model.sample(3)
    with pytest.raises(ValueError, match="width 3"):
        cond_model.sample(3, torch.zeros(3, 3))


# -- files -------------------------------------------------------------------------------------


def test_condition_files(tmp_path: Path, ring_label: Condition, ring_radius: Condition) -> None:
    (tmp_path / "labels.txt").write_text("# one per line\nmode 1\n\n2\n")
    assert read_condition_file(tmp_path / "labels.txt", ring_label).tolist() == [1, 2]
    (tmp_path / "radii.csv").write_text("radius\n1.8\n2.2\n")
    assert torch.allclose(read_condition_file(tmp_path / "radii.csv", ring_radius), torch.tensor([[1.8], [2.2]]))
    np.save(tmp_path / "radii.npy", np.array([[1.9], [2.1]]))
    assert torch.allclose(read_condition_file(tmp_path / "radii.npy", ring_radius), torch.tensor([[1.9], [2.1]]))
    (tmp_path / "bad.txt").write_text("mode 1\nmode 12\n")
    with pytest.raises(ConditionError, match=r"bad.txt: unknown label 'mode 12'"):
        read_condition_file(tmp_path / "bad.txt", ring_label)


def test_csv_condition_columns_are_held_out_of_x(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 60)
    table = np.column_stack([np.cos(6 * t), t, np.sin(6 * t), rng.normal(size=60)])
    np.savetxt(tmp_path / "d.csv", table, delimiter=",", header="x,t,y,w", comments="")
    ds = load_points(tmp_path / "d.csv", condition_columns=["t", "w"])
    assert ds.x.shape == (60, 2)
    assert torch.allclose(ds.x, torch.tensor(table[:, [0, 2]], dtype=torch.float32))
    assert torch.allclose(ds.extras["column:t"], torch.tensor(t, dtype=torch.float32))
    with pytest.raises(DataFileError, match="no column named 'q'"):
        load_points(tmp_path / "d.csv", condition_columns=["q"])
    with pytest.raises(DataFileError, match="both the label column and a condition column"):
        load_points(tmp_path / "d.csv", label_column="t", condition_columns=["t"])
    # End to end: a vector condition from two CSV columns, embedded by the model's MLP.
    cfg = _config({"path": str(tmp_path / "d.csv"), "condition": "column:t,w", "test_fraction": 0.2},
                  {"cond_embed": [8]}, {"epochs": 2, "batch_size": 16})
    run = train_run(cfg, tmp_path / "run")
    assert run.model.x_dim == 2 and run.model.cond_dim == 2 and run.model.cond_embed == (8,)
    assert run.condition.names == ["t", "w"]
    assert run.condition.parse(["0.5,0.1"]).shape == (1, 2)


# -- images (D != 2) -----------------------------------------------------------------------------


def test_label_conditioning_on_images(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({
        "data": {"name": "digits8", "condition": "label", "limit_train": 400, "limit_test": 100},
        "model": {"hidden": [64], "latent_dim": 4, "likelihood": "bernoulli"},
        "train": {**FAST_TRAIN, "epochs": 8, "batch_size": 50},
    })
    run = train_run(cfg, tmp_path / "digits")
    assert run.model.x_dim == 64 and run.model.cond_dim == 10
    assert run.condition.labels == [str(d) for d in range(10)]
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    clf = label_classifier(train, test)
    assert "logistic regression" in clf.description and clf.test_accuracy > 0.8
    acc = conditioning_accuracy(run.model, run.condition, clf, n_per_class=30,
                                generator=torch.Generator().manual_seed(0))
    assert len(acc["per_class"]) == 10
    assert acc["overall"] > 0.3  # far above chance (0.1) after a few seconds of training
    with pytest.raises(ConditionError, match="has no radius"):
        fit_condition("radius", train)


# -- command line --------------------------------------------------------------------------------


def test_cli_conditional_sampling_and_errors(label_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "s.csv"
    res = runner.invoke(app, ["sample", str(label_run), "-n", "50", "-o", str(out), "--condition", "mode 2",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    x = torch.tensor(np.loadtxt(out, delimiter=",", skiprows=1), dtype=torch.float32)
    assert x.shape == (50, 2)
    assert float((label_classifier(ring(50)).predict(x) == 2).double().mean()) >= 0.95
    (tmp_path / "c.txt").write_text("0\n1\nmode 5\n")
    res = runner.invoke(app, ["sample", str(label_run), "-o", str(out), "--condition", str(tmp_path / "c.txt"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert np.loadtxt(out, delimiter=",", skiprows=1).shape == (3, 2)  # one sample per condition
    for args, message in [
        (["--condition", "11"], "unknown label '11'"),
        ([], "this model is conditional"),
        (["--condition", str(tmp_path / "c.txt"), "-n", "4"], "disagrees with the 3 conditions"),
    ]:
        res = runner.invoke(app, ["sample", str(label_run), "-o", str(out), "--device", "cpu", *args])
        assert res.exit_code == 2 and message in res.output, res.output
    # encode / decode take the condition too, one for all rows or one per row
    res = runner.invoke(app, ["encode", str(label_run), "-i", str(out), "-o", str(tmp_path / "e.csv"),
                              "--condition", str(tmp_path / "c.txt"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    np.savetxt(tmp_path / "z.csv", np.zeros((4, 2)), delimiter=",")
    res = runner.invoke(app, ["decode", str(label_run), "-i", str(tmp_path / "z.csv"), "-o", str(tmp_path / "d.csv"),
                              "--condition", "mode 6", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    decoded = torch.tensor(np.loadtxt(tmp_path / "d.csv", delimiter=",", skiprows=1), dtype=torch.float32)
    assert (label_classifier(ring(50)).predict(decoded) == 6).all()
    res = runner.invoke(app, ["decode", str(label_run), "-i", str(tmp_path / "z.csv"), "-o", str(tmp_path / "d.csv"),
                              "--condition", str(tmp_path / "c.txt"), "--device", "cpu"])
    assert res.exit_code == 2 and "3 conditions for 4 rows" in res.output


def test_cli_out_of_range_warning_and_unconditional_refusal(radius_run: Path, trained_run: Path,
                                                          tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "s.csv"
    res = runner.invoke(app, ["sample", str(radius_run), "-n", "10", "-o", str(out), "--condition", "12",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "far outside the training range" in res.output
    assert np.loadtxt(out, delimiter=",", skiprows=1).shape == (10, 2)
    res = runner.invoke(app, ["sample", str(trained_run), "-o", str(out), "--condition", "3", "--device", "cpu"])
    assert res.exit_code == 2 and "trained without a condition" in res.output


def test_cli_train_and_eval_report_conditioning_accuracy(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [
        "train", "--data", "ring", "--condition", "label", "--n-train", "300", "--n-test", "100", "--epochs", "2",
        "--hidden", "16,16", "--eval-k", "8", "--out", str(tmp_path / "r"), "--device", "cpu",
    ])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "r" / ckpt.METRICS_FILE).read_text())
    acc = metrics["conditioning_accuracy"]
    assert set(acc["per_class"]) == {f"mode {k}" for k in range(8)}
    assert 0.0 <= acc["overall"] <= 1.0 and acc["classifier_test_accuracy"] > 0.99
    assert "conditioning accuracy" in res.output
    report = (tmp_path / "r" / "report.html").read_text()
    assert "conditioning accuracy: per_class: mode 7" in report  # nested metrics get one row each
    assert "cond_label_samples" in report or "Samples per label" in report
