"""Sample quality (vaelab.quality): the metrics against closed forms and hand-made point clouds, the
feature classifier and its cache, and `vaelab eval` on image runs (tiny data, tiny budgets)."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vaelab import quality
from vaelab.cli import app
from vaelab.config import RunConfig
from vaelab.data.dataset import Dataset
from vaelab.data.digits import load_digits
from vaelab.data.download import DATA_DIR_ENV
from vaelab.data.registry import load_dataset
from vaelab.errors import VaelabWarning
from vaelab.evaluate import evaluate_run, quality_cache_dir
from vaelab.quality import (
    ClassifierSettings,
    QualityError,
    density_coverage,
    feature_classifier,
    frechet_distance,
    gaussian_frechet_distance,
    knn_radii,
    precision_recall,
    quality_metrics,
    sample_quality,
)
from vaelab.train import train_run

# About 3 s on one core for digits8 (1,437 training images), ~93% test accuracy.
TINY = ClassifierSettings(channels=(4, 8), feature_dim=16, epochs=8, min_steps=0, batch_size=64, lr=1e-2)


@pytest.fixture(autouse=True)
def _user_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Classifier caches go to a fresh user data folder, never the real ~/.cache/vaelab."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=_gen(seed), dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


# --- Fréchet distance -----------------------------------------------------------------------------


def test_frechet_of_diagonal_gaussians_is_the_closed_form() -> None:
    # Commuting (diagonal) covariances: tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) = Σ_i (σ1_i − σ2_i)².
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float((mu1 - mu2).square().sum() + (var1.sqrt() - var2.sqrt()).square().sum())
    got = gaussian_frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(expected, rel=1e-12)  # 7.25 + 4 + 1 = 12.25
    assert expected == pytest.approx(12.25)


def test_frechet_of_full_covariances_matches_scipy_sqrtm() -> None:
    from scipy.linalg import sqrtm

    d = 6
    cov1, cov2 = _spd(d, 1), _spd(d, 2)
    mu1, mu2 = torch.randn(d, generator=_gen(3), dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    root = np.real(sqrtm(cov1.numpy() @ cov2.numpy()))  # the reference FID code's form
    expected = float((mu1 - mu2).square().sum()) + float(np.trace(cov1.numpy() + cov2.numpy() - 2 * root))
    assert gaussian_frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)
    assert gaussian_frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_of_samples_approaches_the_gaussians() -> None:
    # 200,000 draws of N(0, 1) and N(2, 0.5²) in 1-D: FD -> 2² + (1 − 0.5)² = 4.25.
    a = torch.randn(200_000, 1, generator=_gen(4), dtype=torch.float64)
    b = 2 + 0.5 * torch.randn(200_000, 1, generator=_gen(5), dtype=torch.float64)
    assert frechet_distance(a, b) == pytest.approx(4.25, abs=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


# --- precision / recall, density / coverage --------------------------------------------------------


def test_knn_radii_are_the_kth_distance_to_the_others() -> None:
    f = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # Distances from 0: 1, 3, 7; from 1: 1, 2, 6; from 3: 2, 3, 4; from 7: 4, 6, 7.
    assert knn_radii(f, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(f, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(QualityError, match="more than 4 points"):
        knn_radii(f, 4)


def test_identical_sets_score_one_and_far_sets_zero() -> None:
    x = torch.randn(300, 5, generator=_gen(0))
    assert precision_recall(x, x) == (1.0, 1.0)
    density, coverage = density_coverage(x, x)
    assert coverage == 1.0 and density >= 1.0 / quality.K_DENSITY
    far = x + 1000.0
    assert precision_recall(x, far) == (0.0, 0.0)
    assert density_coverage(x, far) == (0.0, 0.0)
    m = quality_metrics(x, far)
    assert m["precision"] == m["recall"] == m["density"] == m["coverage"] == 0.0
    assert m["fd"] == pytest.approx(5 * 1000.0**2, rel=1e-6)


def test_half_of_the_samples_off_the_data_halves_precision_and_density() -> None:
    x = torch.randn(400, 3, generator=_gen(1), dtype=torch.float64)
    fake = torch.cat([x, x + 500.0])  # a copy of the data, and a copy far away
    # The far half lies in no real ball; the near half is the data, whose own k-NN radii (the far
    # points are never among a near point's neighbours) cover every real point.
    assert precision_recall(x, fake) == (0.5, 1.0)
    density, coverage = density_coverage(x, fake)
    assert coverage == 1.0
    assert density == pytest.approx(0.5 * density_coverage(x, x)[0], rel=1e-12)


def test_hand_counted_example() -> None:
    # Real points on a line: 0, 1, 2, 10; k = 1 gives them radii 1, 1, 1, 8. Fakes: 0.5, 5, 30;
    # k = 1 gives them radii 4.5, 4.5, 25.
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    fake = torch.tensor([[0.5], [5.0], [30.0]])
    # Precision: 0.5 lies in the balls of 0 and 1, 5 in that of 10 ([2, 18]), 30 in none: 2/3.
    # Recall: 0, 1, 2 lie in the balls of 0.5 and 5; 10 in the outlier 30's own wide ball ([5, 55]):
    # 4/4, the known pull of a lone outlier on improved recall (Naeem et al. 2020, section 3).
    assert precision_recall(real, fake, k=1) == (pytest.approx(2 / 3), 1.0)
    # Density: 0.5 lies in 2 real balls, 5 in 1, 30 in 0 -> 3 / (k · M) = 1; coverage: the balls of
    # 0, 1 and 10 hold a fake, that of 2 ([1, 3]) none -> 3/4.
    assert density_coverage(real, fake, k=1) == (pytest.approx(1.0), pytest.approx(3 / 4))


def test_coverage_of_the_same_distribution_is_its_expectation() -> None:
    # Naeem et al. (2020), section 4: for real and fake from one distribution, E[coverage] =
    # 1 − Π_{i=1..k} (N − i) / (N + M − i) (≈ 1 − 2^−k for M = N) and E[density] = 1.
    n = m = 3000
    real = torch.randn(n, 2, generator=_gen(6), dtype=torch.float64)
    fake = torch.randn(m, 2, generator=_gen(7), dtype=torch.float64)
    k = quality.K_DENSITY
    expected = 1 - math.prod((n - i) / (n + m - i) for i in range(1, k + 1))
    density, coverage = density_coverage(real, fake)
    assert coverage == pytest.approx(expected, abs=0.015)
    assert density == pytest.approx(1.0, abs=0.08)


def test_blocked_metrics_agree_with_the_plain_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.randn(230, 4, generator=_gen(8))
    fake = 0.8 * torch.randn(170, 4, generator=_gen(9)) + 0.3
    monkeypatch.setattr(quality, "_DISTANCE_BLOCK", 1000)  # several blocks of a few rows each
    got = quality_metrics(real, fake)
    p, r = precision_recall(real, fake)
    d, c = density_coverage(real, fake)
    assert (got["precision"], got["recall"], got["density"], got["coverage"]) == (p, r, pytest.approx(d), c)
    assert got["fd"] == frechet_distance(real, fake)
    assert 0 < p < 1 and 0 < r < 1 and 0 < c < 1


# --- the feature classifier and its cache ----------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_digits("train", size=8), load_digits("test", size=8)


def test_classifier_is_trained_cached_and_reloaded(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    train, test = digits
    before = torch.get_rng_state()
    first = feature_classifier(train, test, tmp_path / "cache", settings=TINY)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator was left alone
    assert first.trained and first.path is not None and first.path.is_file()
    assert first.test_accuracy > 0.8  # 10 digit classes: chance is 0.1
    record = json.loads(first.path.with_suffix(".json").read_text())
    import hashlib

    assert record["weights_sha256"] == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert record["test_accuracy"] == first.test_accuracy and record["settings"]["epochs"] == 8
    assert record["n_train"] == len(train) and record["label_names"] == train.label_names

    again = feature_classifier(train, test, tmp_path / "cache", settings=TINY)
    assert not again.trained and again.test_accuracy == first.test_accuracy
    assert torch.equal(again.features(test.x), first.features(test.x))
    assert again.features(test.x).shape == (len(test), 16) and again.features(test.x).dtype == torch.float64

    # Another budget is another classifier, in a file of its own.
    other = feature_classifier(train, test, tmp_path / "cache", settings=dataclasses.replace(TINY, epochs=1))
    assert other.trained and other.path != first.path


def test_a_damaged_cache_is_trained_again(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    train, test = digits
    first = feature_classifier(train, test, tmp_path, settings=TINY)
    assert first.path is not None
    data = bytearray(first.path.read_bytes())
    data[-1] ^= 0xFF
    first.path.write_bytes(bytes(data))
    second = feature_classifier(train, test, tmp_path, settings=TINY)
    assert second.trained and second.path == first.path
    assert torch.equal(second.features(test.x), first.features(test.x))  # same seed, same weights
    assert not feature_classifier(train, test, tmp_path, settings=TINY).trained  # the rewrite is valid
    first.path.with_suffix(".json").write_text("{not json")
    assert feature_classifier(train, test, tmp_path, settings=TINY).trained


def test_an_unwritable_cache_warns_and_still_works(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    train, test = digits
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.warns(VaelabWarning, match="could not cache the feature classifier"):
        clf = feature_classifier(train, test, blocker / "cache", settings=TINY)
    assert clf.path is None and clf.test_accuracy > 0.8


def test_classifier_refuses_unlabelled_data_and_bad_settings(digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    with pytest.raises(QualityError, match="has none"):
        feature_classifier(Dataset("plain", train.x, image_shape=(1, 8, 8)), test, None, settings=TINY)
    with pytest.raises(QualityError, match="epochs must be a positive integer"):
        feature_classifier(train, test, None, settings=ClassifierSettings(epochs=0))


# --- sample quality of a model -----------------------------------------------------------------------


class _Copier(torch.nn.Module):
    """A stand-in model whose 'samples' are fixed images: for checking the plumbing."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        super().__init__()
        self.images = images
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.x_dim, self.latent_dim = images.shape[1], 2

    def sample(self, n: int, c: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
               noise: bool = False) -> torch.Tensor:
        rows = torch.randint(0, len(self.images), (n,), generator=generator)
        return self.images[rows]


def test_samples_of_the_data_score_like_the_floor(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    train, test = digits
    copier = _Copier(train.x)  # draws training images: as good as a model can be
    noise = _Copier(torch.rand(500, 64, generator=_gen(0)))  # uniform noise images
    good = sample_quality(copier, train, test, n_samples=360, cache_dir=tmp_path,  # type: ignore[arg-type]
                          settings=TINY)
    bad = sample_quality(noise, train, test, n_samples=360, cache_dir=tmp_path,  # type: ignore[arg-type]
                         settings=TINY)
    assert good["n_samples"] == 360 and good["n_test"] == len(test)
    assert good["floor"]["n_per_half"] == len(test) // 2
    assert good["classifier"]["trained_now"] and not bad["classifier"]["trained_now"]
    assert good["fd"] < 0.1 * bad["fd"]
    # Noise images fall partly inside the wide k-NN balls of the 180 test images' outliers, so their
    # precision is not 0 (the weakness density was made for, Naeem et al. 2020): compare, don't pin.
    assert good["precision"] > 0.8 and good["precision"] > bad["precision"] + 0.2
    assert good["recall"] > 0.7 and bad["recall"] < 0.4
    assert good["coverage"] > 0.8 and bad["coverage"] < 0.4
    assert good["density"] > 0.8 and bad["density"] < 0.6
    assert good["floor"] == bad["floor"]  # the floor is the data's own, whatever the model
    assert 0.7 < good["floor"]["precision"] <= 1.0


def test_sample_quality_checks_sizes_first(digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    copier = _Copier(train.x)
    for n in (0, 3, 10**9, 2.5, True):
        with pytest.raises(QualityError, match="quality samples must be an integer"):
            sample_quality(copier, train, test, n_samples=n, settings=TINY)  # type: ignore[arg-type]
    with pytest.raises(QualityError, match="needs at least 12"):
        sample_quality(copier, train, test.rows(slice(0, 11)), n_samples=100, settings=TINY)  # type: ignore[arg-type]


# --- vaelab eval on image runs -------------------------------------------------------------------------


def _digits_run(tmp_path: Path, name: str, **data: object) -> Path:
    cfg = RunConfig.from_dict({
        "data": {"name": "digits8", "limit_train": 256, "limit_test": 120, **data},
        "model": {"hidden": [32], "latent_dim": 2, "likelihood": "bernoulli", "activation": "relu"},
        "train": {"epochs": 2, "batch_size": 64, "diversity_samples": 16, "lr": 3e-3},
        "eval": {"k": 4},
    })
    out = tmp_path / name
    train_run(cfg, out)
    return out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _digits_run(tmp_path_factory.mktemp("quality"), "run")


def test_evaluate_run_adds_sample_quality(image_run: Path, tmp_path: Path) -> None:
    metrics = evaluate_run(image_run, write=False, device="cpu", quality_samples=200, quality_classifier=TINY)
    q = metrics["sample_quality"]
    assert q["n_samples"] == 200 and q["n_test"] == 120  # the run's test split (limit_test)
    for key in quality.METRIC_NAMES:
        assert math.isfinite(q[key]) and math.isfinite(q["floor"][key])
    # The classifier learned the whole digits8 training split, and is cached in the user's data folder.
    cfg = json.loads((image_run / "config.json").read_text())
    folder = quality_cache_dir(RunConfig.from_dict(cfg).data)
    assert folder == tmp_path / "data" / "digits8"
    assert q["classifier"]["path"] is not None and Path(q["classifier"]["path"]).parent == folder
    record = json.loads(Path(q["classifier"]["path"]).with_suffix(".json").read_text())
    whole = RunConfig.from_dict(cfg).data.model_copy(update={"limit_train": None, "limit_test": None})
    assert record["n_train"] == len(load_dataset(whole, "train")) > 256
    assert record["n_test"] == len(load_dataset(whole, "test")) > 120
    # Without quality_samples, nothing of it.
    plain = evaluate_run(image_run, write=False, device="cpu")
    assert "sample_quality" not in plain and plain["iwae_nll"] == metrics["iwae_nll"]


def test_a_conditional_run_gets_class_accuracy(tmp_path: Path) -> None:
    run = _digits_run(tmp_path, "cond", condition="label")
    q = evaluate_run(run, write=False, device="cpu", quality_samples=300, quality_classifier=TINY)["sample_quality"]
    acc = q["class_accuracy"]
    assert list(acc["per_class"]) == [str(d) for d in range(10)]
    assert all(0.0 <= v <= 1.0 for v in acc["per_class"].values())
    assert acc["overall"] == pytest.approx(sum(acc["per_class"].values()) / 10)
    assert "c of random test points" in q["samples"]


def test_cli_eval_prints_quality_beside_its_floor(image_run: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(image_run, run)
    monkeypatch.setattr(quality, "ClassifierSettings", lambda: TINY)  # a tiny budget for the default
    result = CliRunner().invoke(app, ["eval", str(run), "--quality-samples", "150", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "sample quality: 150 samples vs 120 test images" in result.output
    assert "floor: test half vs half (60 each)" in result.output
    line = next(s for s in result.output.splitlines() if "Fréchet distance" in s)
    assert len([t for t in line.split() if t.replace(".", "").isdigit()]) == 2  # the value and its floor
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["sample_quality"]["n_samples"] == 150

    skipped = CliRunner().invoke(app, ["eval", str(run), "--no-quality", "--device", "cpu"])
    assert skipped.exit_code == 0 and "sample quality" not in skipped.output
    both = CliRunner().invoke(app, ["eval", str(run), "--no-quality", "--quality-samples", "10"])
    assert both.exit_code == 2 and "give one of them" in both.output
    bad = CliRunner().invoke(app, ["eval", str(run), "--quality-samples", "2"])
    assert bad.exit_code == 2 and "quality samples must be an integer from 4" in bad.output


def test_cli_eval_refuses_quality_options_on_points(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "points"
    shutil.copytree(trained_run, run)  # the session's run stays as it is
    for args in (["--quality-samples", "100"], ["--no-quality"]):
        result = CliRunner().invoke(app, ["eval", str(run), *args, "--device", "cpu"])
        assert result.exit_code == 2 and "applies to image runs" in result.output, result.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = CliRunner().invoke(app, ["eval", str(run), "--device", "cpu"])
    assert result.exit_code == 0 and "sample quality" not in result.output


def test_too_few_test_images_give_a_note_not_an_error(tmp_path: Path) -> None:
    run = _digits_run(tmp_path, "few", limit_test=11)
    metrics = evaluate_run(run, write=False, device="cpu", quality_samples=50, quality_classifier=TINY)
    assert "sample_quality" not in metrics
    assert metrics["sample_quality_note"].startswith("no sample quality: ")
    assert "has 11 images; sample quality needs at least 12" in metrics["sample_quality_note"]
    assert math.isfinite(metrics["iwae_nll"])  # the rest of the evaluation is there


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (no "
                    "/usr/share/datasets/fashion-mnist/): apt-get install dataset-fashion-mnist, as "
                    "scripts/test.sh does")
def test_full_size_fashion_mnist_protocol(tmp_path: Path) -> None:
    """The default protocol on the full Fashion-MNIST (about 30 s of CPU time): the classifier's
    feature space is trustworthy, training images score like the test split against itself, and
    blurred ones (a VAE's typical failure) lose recall and coverage but not precision."""
    from vaelab.data.mnist import load_mnist_family

    train = load_mnist_family("fashion-mnist", "train", data_dir=tmp_path / "user", download=False,
                              system_dirs=[FASHION.parent])
    test = load_mnist_family("fashion-mnist", "test", data_dir=tmp_path / "user", download=False,
                             system_dirs=[FASHION.parent])
    # Measured 2026-12-07 (one thread): accuracy 0.896; training images fd 0.40, precision 0.869,
    # recall 0.845, density 0.996, coverage 0.961; floor fd 0.96, 0.858, 0.871, 0.972, 0.965;
    # blurred fd 32.7, precision 0.941, recall 0.150, density 1.37, coverage 0.605.
    real = sample_quality(_Copier(train.x), train, test, cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    assert real["classifier"]["test_accuracy"] > 0.88 and real["n_samples"] == 10_000
    floor = real["floor"]
    assert real["fd"] < floor["fd"] < 2.0  # 10,000 vs 10,000 images: less finite-sample bias than 5,000 vs 5,000
    for key in ("precision", "recall", "density", "coverage"):
        assert abs(real[key] - floor[key]) < 0.05, key
    blurred = torch.nn.functional.avg_pool2d(train.x.reshape(-1, 1, 28, 28), 3, 1, 1).reshape(-1, 784)
    blur = sample_quality(_Copier(blurred), train, test, cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    assert not blur["classifier"]["trained_now"]
    assert blur["fd"] > 10 * floor["fd"]
    assert blur["recall"] < 0.5 * floor["recall"] and blur["coverage"] < 0.8 * floor["coverage"]
    assert blur["precision"] > 0.8 * floor["precision"]
