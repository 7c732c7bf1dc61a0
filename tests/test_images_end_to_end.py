"""Images end to end: registry entries, binarization modes, bits per dimension, presets and the
CLI on scikit-learn's digits and on the real MNIST test file (skipped when it is absent)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import RunConfig
from vaelab.data.pixels import eval_view, fixed_binarization, is_binary, resolve_binarize
from vaelab.data.registry import DATASETS, is_image_config, load_dataset
from vaelab.evaluate import evaluate, evaluate_run
from vaelab.models import build_model
from vaelab.presets import PRESETS, apply_preset
from vaelab.train import fit, train_run

# ../shared/data beside the checkout (main), or two levels up for a worktree under wt/.
SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[2:4]
               if (p / "shared" / "data" / "mnist").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "data")
needs_mnist = pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason="the MNIST test split is not in ../shared/data/mnist")
runner = CliRunner()


def digits_config(**over: dict) -> RunConfig:
    base = {
        "data": {"name": "digits8", "limit_train": 256, "limit_test": 64},
        "model": {"hidden": [32], "latent_dim": 2, "likelihood": "bernoulli", "activation": "relu"},
        "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 16, "lr": 3e-3},
        "eval": {"k": 8},
    }
    for key, values in over.items():
        base[key].update(values)
    return RunConfig.from_dict(base)


def test_image_datasets_are_registered():
    for name in ("mnist", "fashion-mnist", "kmnist", "digits", "digits8"):
        assert DATASETS[name].kind == "image"
    cfg = digits_config()
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    assert train.x.shape == (256, 64) and test.x.shape == (64, 64) and train.image_shape == (1, 8, 8)
    assert is_image_config(cfg.data) and not is_image_config(RunConfig().data)
    big = load_dataset(cfg.data.model_copy(update={"name": "digits", "limit_train": None}), "train")
    assert big.x.shape[1] == 784 and float(big.x.min()) >= 0 and float(big.x.max()) <= 1


@needs_mnist
def test_mnist_test_9k_split():
    cfg = RunConfig.from_dict({"data": {"name": "mnist", "data_dir": str(SHARED), "image_split": "test-9k"}})
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    assert len(train) == 9000 and len(test) == 1000 and train.image_shape == (1, 28, 28)
    full = load_dataset(cfg.data.model_copy(update={"image_split": "official"}), "test")
    assert torch.equal(full.x[:9000], train.x) and torch.equal(full.x[9000:], test.x)
    assert torch.equal(full.labels[9000:], test.labels)


def test_binarize_auto_and_errors():
    cfg = digits_config()
    data = load_dataset(cfg.data, "train")
    assert resolve_binarize(cfg, data) == "dynamic"
    gauss = digits_config(model={"likelihood": "gaussian"})
    assert resolve_binarize(gauss, data) == "none"
    with pytest.raises(ValueError, match="grey levels"):
        resolve_binarize(digits_config(data={"binarize": "none"}), data)
    # Fixed: a pure function of (split, seed), binary, and different between the splits.
    a, b = fixed_binarization(data.x, "train", 0), fixed_binarization(data.x, "train", 0)
    assert torch.equal(a, b) and is_binary(a)
    assert not torch.equal(a, fixed_binarization(data.x, "test", 0))
    test, note = eval_view(cfg, load_dataset(cfg.data, "test"))
    assert is_binary(test.x) and note.startswith("fixed")
    assert eval_view(gauss, data)[0] is data


def _fit(cfg: RunConfig, dynamic: bool) -> list[float]:
    x = load_dataset(cfg.data, "train").x
    model = build_model(cfg.model, x.shape[1], seed=0)
    if not dynamic:
        x = fixed_binarization(x, "train", 0)
    return fit(model, x, cfg.train, dynamic_binarization=dynamic).column("loss")


def test_dynamic_binarization_is_reproducible_and_redrawn():
    cfg = digits_config()
    first, second = _fit(cfg, True), _fit(cfg, True)
    assert first == second
    assert first != _fit(cfg, False)


def test_dynamic_binarization_resumes_exactly(tmp_path):
    # A constant learning rate, so the 2-epoch run is the first half of the 4-epoch one.
    cfg = digits_config(train={"epochs": 4, "checkpoint_every": 2, "lr_schedule": "constant"})
    straight = train_run(cfg, tmp_path / "a").history.column("loss")
    train_run(digits_config(train={"epochs": 2, "lr_schedule": "constant"}), tmp_path / "b")
    resumed = train_run(cfg, tmp_path / "b", resume=True).history.column("loss")
    assert resumed == pytest.approx(straight, rel=0, abs=1e-9)


def test_bits_per_dim_matches_nats(tmp_path):
    cfg = digits_config()
    run = train_run(cfg, tmp_path / "run")
    test, _ = eval_view(cfg, load_dataset(cfg.data, "test"))
    m = evaluate(run.model, test, k=8, batch_size=32)
    scale = 64 * math.log(2)
    assert m["iwae_bpd"] == pytest.approx(m["iwae_nll"] / scale)
    assert m["elbo_bpd_se"] == pytest.approx(m["elbo_se"] / scale)
    # Even two epochs beat a fair coin per pixel (exactly 1 bit: see test_evaluate), and the
    # IWAE bound is tighter than the ELBO beyond its noise.
    assert m["iwae_bpd"] + 3 * m["iwae_bpd_se"] < 1.0
    assert m["iwae_bpd"] < m["elbo_bpd"] - 3 * m["elbo_bpd_se"] / 10


def test_presets_validate():
    # the course's presets; iwae-paper (Burda et al.'s batches of 20 and staged rate) has its own tests
    classic = [name for name in PRESETS if name != "iwae-paper"]
    for name in classic:
        cfg = apply_preset(RunConfig(), name)
        assert cfg.train.batch_size == 128
    assert apply_preset(RunConfig(), "mnist-conv").model.net == "conv"
    # the classic recipe, whatever the 2D defaults are: ELBO, constant learning rate
    iwae_defaults = RunConfig.from_dict({"train": {"objective": "iwae", "lr_schedule": "cosine"}})
    for name in classic:
        train = apply_preset(iwae_defaults, name).train
        assert (train.objective, train.lr_schedule, train.lr) == ("elbo", "constant", 1e-3)
    paper = apply_preset(iwae_defaults, "iwae-paper").train  # pinned in full too: the 2D defaults do not leak
    assert (paper.objective, paper.lr_schedule, paper.lr, paper.batch_size) == ("elbo", "burda", 1e-3, 20)
    assert apply_preset(RunConfig(), "mnist-mlp-gaussian").model.recon_var == 0.5
    with pytest.raises(ValueError, match="unknown preset"):
        apply_preset(RunConfig(), "nope")


def test_cli_digits_uses_image_preset(tmp_path):
    out = tmp_path / "digits"
    result = runner.invoke(app, ["train", "--data", "digits8", "--epochs", "1", "--hidden", "32", "--latent-dim", "2",
                                 "--limit-train", "200", "--limit-test", "50", "--eval-k", "8", "--device", "cpu",
                                 "--no-report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mnist-mlp-bernoulli" in result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["likelihood"] == "bernoulli" and cfg["data"]["binarize"] == "dynamic"
    assert cfg["model"]["hidden"] == [32]  # flags override the preset
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["binarization"].startswith("fixed") and "iwae_bpd" in metrics


@needs_mnist
def test_cli_conv_on_mnist_test_file(tmp_path):
    out = tmp_path / "conv"
    result = runner.invoke(app, ["train", "--data", "mnist", "--data-dir", str(SHARED), "--image-split", "test-9k",
                                 "--preset", "mnist-conv", "--steps", "3", "--limit-train", "256",
                                 "--limit-test", "32", "--eval-k", "4", "--device", "cpu", "--no-report",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["net"] == "conv" and cfg["model"]["latent_dim"] == 32
    result = runner.invoke(app, ["eval", str(out), "--k", "4", "--device", "cpu", "--json", "--no-quality"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["n"] == 32 and metrics["binarization"].startswith("fixed")
    # the library gives the CLI's numbers (issue 8, item 4): same binarized view, same draws
    assert evaluate_run(out, k=4, write=False) == metrics


def test_cli_missing_mnist_says_where(tmp_path, monkeypatch):
    # No network in tests: a data folder without the files and mirrors that refuse at once.
    from vaelab.data import mnist

    spec = dataclasses.replace(mnist.MNIST_FAMILY["kmnist"], base_urls=("http://127.0.0.1:9/",))
    monkeypatch.setitem(mnist.MNIST_FAMILY, "kmnist", spec)
    result = runner.invoke(app, ["train", "--data", "kmnist", "--data-dir", str(tmp_path), "--epochs", "1",
                                 "--device", "cpu", "--no-report", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert str(tmp_path / "kmnist") in result.output.replace("\n", "")


def test_image_folder_with_conv_vae(tmp_path):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for cls in ("circle", "square"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(8):
            pixels = (torch.rand(20, 20, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    cfg = RunConfig.from_dict({
        "data": {"path": str(tmp_path / "imgs"), "image_size": 16, "test_fraction": 0.25},
        "model": {"net": "conv", "latent_dim": 3, "likelihood": "bernoulli"},
        "train": {"epochs": 1, "batch_size": 8, "diversity_samples": 8},
    })
    assert is_image_config(cfg.data)
    run = train_run(cfg, tmp_path / "run")
    test = load_dataset(cfg.data, "test")
    assert test.image_shape == (1, 16, 16) and len(test) == 4 and test.label_names == ["circle", "square"]
    m = evaluate(run.model, eval_view(cfg, test)[0], k=4)
    # Bernoulli draws of uniform grey noise are fair coins: no model gets below 1 bit per pixel
    assert m["iwae_bpd"] > 0.9


@needs_mnist
def test_cli_downloads_from_local_mirror(tmp_path, monkeypatch):
    # A local HTTP server plays the mirror, serving the real t10k files (so the MD5s match).
    import functools
    import http.server
    import threading

    from vaelab.data import mnist

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SHARED / "mnist"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        # The shared copies were re-gzipped, so their MD5s differ from the published ones.
        spec = mnist.MNIST_FAMILY["mnist"]
        def md5(name: str) -> str:
            return hashlib.md5((SHARED / "mnist" / name).read_bytes()).hexdigest()

        local = {key: mnist.IdxResource(r.filename, md5(r.filename))
                 for key, r in (("test_images", spec.test_images), ("test_labels", spec.test_labels))}
        monkeypatch.setitem(mnist.MNIST_FAMILY, "mnist", dataclasses.replace(spec, base_urls=(url,), **local))
        result = runner.invoke(app, ["train", "--data", "mnist", "--data-dir", str(tmp_path / "data"),
                                     "--image-split", "test-9k", "--steps", "2", "--limit-train", "128",
                                     "--limit-test", "16", "--eval-k", "2", "--no-report", "--device", "cpu",
                                     "--out", str(tmp_path / "run")])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert "downloading t10k-images-idx3-ubyte.gz" in result.output  # the progress bar
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (tmp_path / "data" / "mnist" / name).read_bytes() == (SHARED / "mnist" / name).read_bytes()
    assert not (tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz").exists()  # test-9k needs no train files
