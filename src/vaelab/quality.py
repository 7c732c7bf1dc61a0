"""Sample quality for images: Fréchet distance, improved precision / recall and density / coverage
between a model's samples and the test split, in the feature space of a small classifier.

The protocol (docs/quality.md says why it is not the Inception FID of other papers):

* **Features.** A small conv classifier (``FeatureNet``: two stride-2 convolutions and a hidden
  layer; the hidden layer's ``feature_dim`` activations are the feature space) is trained once per
  dataset on its training split, with a fixed seed and budget (``ClassifierSettings``), and cached
  in the user's data folder beside the dataset: ``vaelab-features-v1-<key>.safetensors`` and a JSON
  record with the weights' sha256, the classifier's test accuracy (how far the feature space can be
  trusted) and its settings. ``<key>`` is a hash of the training and test data and the settings, so
  another split (``test-9k``, an image folder) gets its own classifier. A cache that is missing,
  damaged (checksum) or of other settings is trained again and written atomically.
* **Samples.** ``n_samples`` (default 10,000) decoder means E[x|z] with z ~ p(z) (p(z|c) for a
  conditional run, c that of randomly chosen test points), clipped to [0, 1]: the images vaelab shows.
* **Numbers** (float64): the Fréchet distance between Gaussians fitted to the two feature sets
  (Heusel et al. 2017, eq. 6), improved precision and recall with k = 3 (Kynkäänniemi et al. 2019,
  eqs. 1-3), density and coverage with k = 5 (Naeem et al. 2020, eqs. 5-6); real = the test split.
* **Floor.** The same numbers between the two halves of the test split (a fixed random halving):
  what two samples of the data itself score, printed beside each number.
* **Conditional runs** (label conditions): the share of the samples drawn for each label that the
  classifier assigns to it.

Nothing here prints or draws from torch's global generator: every draw takes an explicit
``torch.Generator``; the classifier's initial weights are drawn inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vaelab.checkpoint.atomic import WriteError, atomic_write_bytes, write_json
from vaelab.data.dataset import Dataset
from vaelab.errors import InputError, VaelabWarning
from vaelab.memory import FLOAT_BYTES, check_fits

if TYPE_CHECKING:
    from vaelab.conditions.spec import Condition
    from vaelab.models import LatentModel

__all__ = [
    "DEFAULT_QUALITY_SAMPLES",
    "K_DENSITY",
    "K_PRECISION",
    "ClassifierSettings",
    "FeatureClassifier",
    "FeatureNet",
    "QualityError",
    "density_coverage",
    "feature_classifier",
    "frechet_distance",
    "gaussian_frechet_distance",
    "knn_radii",
    "precision_recall",
    "quality_metrics",
    "sample_quality",
]

DEFAULT_QUALITY_SAMPLES = 10_000
MAX_QUALITY_SAMPLES = 1_000_000
K_PRECISION = 3  # Kynkäänniemi et al. (2019): k = 3
K_DENSITY = 5  # Naeem et al. (2020): k = 5
# The test split is halved for the floor, and each half needs more than K_DENSITY points.
MIN_TEST_POINTS = 2 * (K_DENSITY + 1)
CACHE_VERSION = 1
CACHE_PREFIX = f"vaelab-features-v{CACHE_VERSION}"
# Seed of the test split's halving for the floor (fixed: the floor is the dataset's, not the run's).
FLOOR_SEED = 0
# Pairwise distances computed at once: rows x columns of float64 (32 MiB).
_DISTANCE_BLOCK = 2**22
METRIC_NAMES = ("fd", "precision", "recall", "density", "coverage")


class QualityError(InputError):
    """Sample quality cannot be measured as asked (sizes, settings, data without labels)."""


# ---------------------------------------------------------------------------------------------
# The numbers
# ---------------------------------------------------------------------------------------------


def _features(f: Tensor, name: str) -> Tensor:
    if not isinstance(f, Tensor) or f.ndim != 2 or f.shape[0] < 1:
        raise QualityError(f"{name} must be an (N, d) tensor of features with N >= 1, got "
                           f"{tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}")
    return f.double()


def gaussian_frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2):

        ‖μ1 − μ2‖² + tr(Σ1) + tr(Σ2) − 2 tr((Σ1^½ Σ2 Σ1^½)^½)        (Heusel et al. 2017, eq. 6)

    tr((Σ1 Σ2)^½) is written with the symmetric Σ1^½ Σ2 Σ1^½ (same eigenvalues as Σ1 Σ2), whose
    square root is taken by an eigen-decomposition: no complex parts, unlike ``scipy.linalg.sqrtm``
    of the non-symmetric product. Eigenvalues below 0 (round-off of a singular covariance) count
    as 0. mu: (d,), cov: (d, d); computed in float64.
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    evals1, evecs1 = torch.linalg.eigh(cov1)
    sqrt1 = evecs1 @ torch.diag(evals1.clamp(min=0).sqrt()) @ evecs1.T  # Σ1^½
    middle = sqrt1 @ cov2 @ sqrt1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_sqrt
    return float(value.clamp(min=0))  # ≥ 0 exactly; round-off can dip below by ~1e-12


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (N, d) and (M, d): their
    means and unbiased covariances (``torch.cov``, as ``numpy.cov`` in the FID reference code).
    Needs N, M ≥ 2. It is biased upwards by finite samples (the bias shrinks like 1/N), so compare
    values measured with the same numbers of points."""
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[0] < 2 or fake.shape[0] < 2 or real.shape[1] != fake.shape[1]:
        raise QualityError(f"the Fréchet distance needs two sets of >= 2 points of the same width, got "
                           f"{tuple(real.shape)} and {tuple(fake.shape)}")
    return gaussian_frechet_distance(real.mean(0), torch.cov(real.T).reshape(real.shape[1], -1),
                                     fake.mean(0), torch.cov(fake.T).reshape(fake.shape[1], -1))


def _blocks(n_rows: int, n_cols: int) -> range:
    step = max(1, _DISTANCE_BLOCK // max(1, n_cols))
    return range(0, n_rows, step)


def knn_radii(f: Tensor, k: int) -> Tensor:
    """The distance of each point of f (N, d) to its k-th nearest neighbour among the others: (N,)
    float64. (The point itself, at distance 0, is the 0-th.) Needs N > k."""
    f = _features(f, "features")
    if f.shape[0] <= k:
        raise QualityError(f"the k = {k} nearest neighbours need more than {k} points, got {f.shape[0]}")
    out = torch.empty(f.shape[0], dtype=torch.float64, device=f.device)
    step = _blocks(f.shape[0], f.shape[0]).step
    for start in range(0, f.shape[0], step):
        d = torch.cdist(f[start:start + step], f)  # (b, N)
        out[start:start + step] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def _cross(real: Tensor, fake: Tensor, real_radii: dict[int, Tensor], fake_radii: Tensor,
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One pass over the real-to-fake distances. Returns, per fake point, whether it lies in some
    real k-NN ball (k = K_PRECISION) (M,) and in how many real balls (k = K_DENSITY) (M,); per real
    point, whether some fake k-NN ball (k = K_PRECISION) holds it (N,) and whether some fake point
    lies in its own ball (k = K_DENSITY) (N,)."""
    in_real = torch.zeros(fake.shape[0], dtype=torch.bool, device=fake.device)
    count = torch.zeros(fake.shape[0], dtype=torch.float64, device=fake.device)
    in_fake = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    covered = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    step = _blocks(fake.shape[0], real.shape[0]).step
    for start in range(0, fake.shape[0], step):
        d = torch.cdist(fake[start:start + step], real)  # (b, N): ‖y_j − x_i‖
        in_real[start:start + step] = (d <= real_radii[K_PRECISION][None]).any(dim=1)
        within = d <= real_radii[K_DENSITY][None]  # (b, N): y_j ∈ B(x_i, NND_k(x_i))
        count[start:start + step] = within.double().sum(dim=1)
        covered |= within.any(dim=0)
        in_fake |= (d <= fake_radii[start:start + step, None]).any(dim=0)
    return in_real, count, in_fake, covered


def precision_recall(real: Tensor, fake: Tensor, k: int = K_PRECISION) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1-3) of fake (M, d) against
    real (N, d): the manifold of a set is the union of balls around its points, each of radius the
    distance to that point's k-th nearest neighbour in its own set;

        precision = (1/M) Σ_j 1[y_j ∈ manifold(real)],   recall = (1/N) Σ_i 1[x_i ∈ manifold(fake)].

    The plain form, with the whole (M, N) distance matrix; ``quality_metrics`` computes the same
    in blocks (tests/test_quality.py shows they agree).
    """
    real, fake = _features(real, "real"), _features(fake, "fake")
    d = torch.cdist(fake, real)  # (M, N): ‖y_j − x_i‖
    precision = (d <= knn_radii(real, k)[None, :]).any(dim=1).double().mean()
    recall = (d <= knn_radii(fake, k)[:, None]).any(dim=0).double().mean()
    return float(precision), float(recall)


def density_coverage(real: Tensor, fake: Tensor, k: int = K_DENSITY) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eqs. 5-6) of fake (M, d) against real (N, d), with
    B(x_i, NND_k(x_i)) the ball around real point x_i out to its k-th nearest real neighbour:

        density  = 1/(k M) Σ_j Σ_i 1[y_j ∈ B(x_i, NND_k(x_i))]     (about 1 for the same distribution)
        coverage = 1/N Σ_i 1[∃ j: y_j ∈ B(x_i, NND_k(x_i))]

    The plain form, as ``precision_recall``.
    """
    real, fake = _features(real, "real"), _features(fake, "fake")
    within = torch.cdist(fake, real) <= knn_radii(real, k)[None, :]  # (M, N)
    return float(within.double().sum()) / (k * fake.shape[0]), float(within.any(dim=0).double().mean())


def quality_metrics(real: Tensor, fake: Tensor) -> dict[str, float]:
    """``fd``, ``precision``, ``recall`` (k = 3), ``density``, ``coverage`` (k = 5) of fake (M, d)
    against real (N, d), in float64: the numbers of ``frechet_distance``, ``precision_recall`` and
    ``density_coverage``, from one pass over the real-to-fake distances in blocks (``_cross``), so
    10,000 x 10,000 points never hold the whole matrix. Needs N > 5 and M > 3."""
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise QualityError(f"real and fake features differ in width: {real.shape[1]} and {fake.shape[1]}")
    real_radii = {k: knn_radii(real, k) for k in (K_PRECISION, K_DENSITY)}
    in_real, count, in_fake, covered = _cross(real, fake, real_radii, knn_radii(fake, K_PRECISION))
    return {
        "fd": frechet_distance(real, fake),
        "precision": float(in_real.double().mean()),
        "recall": float(in_fake.double().mean()),
        "density": float(count.sum()) / (K_DENSITY * fake.shape[0]),
        "coverage": float(covered.double().mean()),
    }


# ---------------------------------------------------------------------------------------------
# The feature classifier and its cache
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierSettings:
    """How the feature classifier is built and trained (part of the cache key).

    Defaults: channels (16, 32), 128 features, Adam (lr 4e-3, batches of 256) for 4 epochs over the
    whole training split but at least ``min_steps`` = 300 steps (a small training split, such as
    the 1,617 digits, would get only 28 steps from 4 epochs), seed 0. Few large batches rather
    than many small ones: on 2 busy CPU cores torch's threads waited on each other for most of the
    time of 2,813 batches of 64 (665 s; 938 batches of 256: 188 s, the same accuracy). On
    Fashion-MNIST (60,000 images) it reaches about 89.5% test accuracy. ``max_train`` keeps a
    seeded subset of the training split (tests use a tiny budget).
    """

    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 128
    epochs: int = 4
    min_steps: int = 300
    batch_size: int = 256
    lr: float = 4e-3
    seed: int = 0
    max_train: int | None = None

    def check(self) -> None:
        ints = {"channels[0]": self.channels[0], "channels[1]": self.channels[1], "feature_dim": self.feature_dim,
                "epochs": self.epochs, "batch_size": self.batch_size}
        if isinstance(self.min_steps, bool) or not isinstance(self.min_steps, int) or self.min_steps < 0:
            raise QualityError(f"classifier setting min_steps must be an integer >= 0, got {self.min_steps!r}")
        if self.max_train is not None:
            ints["max_train"] = self.max_train
        for name, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise QualityError(f"classifier setting {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise QualityError(f"classifier setting lr must be a positive number, got {self.lr!r}")


class FeatureNet(nn.Module):
    """x (B, C·H·W) in [0, 1] -> logits (B, K); ``features`` gives the penultimate layer (B, feature_dim).

    conv 3x3 stride 2 -> ReLU -> conv 3x3 stride 2 -> ReLU -> linear -> ReLU [features] -> linear.
    """

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int, channels: tuple[int, int] = (16, 32),
                 feature_dim: int = 128) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        self.body = nn.Sequential(
            nn.Conv2d(c, channels[0], 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        )
        side = lambda n: (n + 1) // 2  # noqa: E731  (a stride-2, padding-1, 3x3 convolution's output size)
        flat = channels[1] * side(side(h)) * side(side(w))
        self.hidden = nn.Sequential(nn.Linear(flat, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, C·H·W) -> (B, feature_dim): the feature space of the quality metrics."""
        return self.hidden(self.body(x.reshape(-1, *self.image_shape)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C·H·W) -> logits (B, K)."""
        return self.head(self.features(x))


@dataclass
class FeatureClassifier:
    """A trained ``FeatureNet`` with what the metrics report about it.

    Attributes:
        net: the network (eval mode).
        label_names: the class of each logit.
        test_accuracy: its accuracy on the test split: how much its feature space can be trusted.
        path: the cached weights (None when they could not be written).
        trained: True when this call trained it (no usable cache).
        record: the cache's JSON record (settings, sizes, checksum, training time).
    """

    net: FeatureNet
    label_names: list[str]
    test_accuracy: float
    path: Path | None
    trained: bool
    record: dict[str, Any]

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """(N, D) -> (N, feature_dim) float64, in batches."""
        dev = next(self.net.parameters()).device
        parts = [self.net.features(x[i:i + batch_size].to(dev, torch.float32)).double()
                 for i in range(0, x.shape[0], batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.net.head.in_features, dtype=torch.float64)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """(N, D) -> predicted labels (N,) int64 (on x's device)."""
        dev = next(self.net.parameters()).device
        return torch.cat([self.net(x[i:i + batch_size].to(dev, torch.float32)).argmax(1).to(x.device)
                          for i in range(0, x.shape[0], batch_size)])


def _data_key(train: Dataset, test: Dataset, settings: ClassifierSettings) -> str:
    """sha256 of both splits' pixels, labels and shapes and of the settings: the cache's name."""
    digest = hashlib.sha256(f"{CACHE_PREFIX}|{train.image_shape}|{json.dumps(asdict(settings))}".encode())
    for data in (train, test):
        assert data.labels is not None
        for t in (data.x.detach().to("cpu", torch.float32), data.labels.detach().to("cpu", torch.int64)):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.contiguous().numpy().data)
    return digest.hexdigest()


def _check_labelled(train: Dataset, test: Dataset) -> int:
    if train.image_shape is None:
        raise QualityError(f"{train.name}: sample quality is measured on images; this data has no image shape")
    if train.labels is None or test.labels is None:
        raise QualityError(f"{train.name}: the feature classifier learns the data's labels, and this data has none "
                           "(an image folder without class subfolders); sample quality cannot be measured")
    n_classes = len(train.label_names) if train.label_names else int(train.labels.max()) + 1
    if n_classes < 2 or int(train.labels.unique().numel()) < 2:
        raise QualityError(f"{train.name}: the feature classifier needs at least two classes in the training split")
    if tuple(test.image_shape or ()) != tuple(train.image_shape):
        raise QualityError(f"{train.name}: the test images {test.image_shape} differ from the training images "
                           f"{train.image_shape}")
    return n_classes


def _build(train: Dataset, n_classes: int, settings: ClassifierSettings) -> FeatureNet:
    assert train.image_shape is not None
    # nn.Module draws its initial weights from torch's global generator: drawn inside fork_rng, from
    # the settings' seed, so the caller's global stream is untouched and the weights are reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return FeatureNet(train.image_shape, n_classes, settings.channels, settings.feature_dim)


@torch.no_grad()
def _accuracy(net: FeatureNet, x: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    dev = next(net.parameters()).device
    right = sum(int((net(x[i:i + batch_size].to(dev)).argmax(1) == labels[i:i + batch_size].to(dev)).sum())
                for i in range(0, x.shape[0], batch_size))
    return right / max(1, x.shape[0])


def _train(net: FeatureNet, train: Dataset, settings: ClassifierSettings, device: torch.device,
           on_step: Callable[[int, int], None] | None) -> None:
    """Cross-entropy, Adam, ``settings.epochs`` passes over a seeded shuffle of the training split
    (more passes, the last one cut short, where that is fewer than ``settings.min_steps`` steps)."""
    assert train.labels is not None
    gen = torch.Generator().manual_seed(settings.seed)
    x, y = train.x, train.labels
    if settings.max_train is not None and settings.max_train < len(x):
        rows = torch.randperm(len(x), generator=gen)[:settings.max_train]
        x, y = x[rows], y[rows]
    x, y = x.to(device, torch.float32), y.to(device, torch.int64)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    steps_per_epoch = -(-len(x) // settings.batch_size)
    total = max(settings.epochs * steps_per_epoch, settings.min_steps)
    step = 0
    while step < total:
        order = torch.randperm(len(x), generator=gen).to(device)  # a new shuffle per pass
        for b in range(min(steps_per_epoch, total - step)):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step, total)
    net.eval()


def _load_cached(json_path: Path, weights_path: Path, net: FeatureNet, key: str) -> dict[str, Any] | None:
    """The cache's record when its weights match their sha256 and fit ``net`` (loaded into it);
    None when anything is missing, damaged or of another version."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        record = json.loads(json_path.read_text())
        data = weights_path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != CACHE_VERSION or record.get("data_sha256") != key:
        return None
    if hashlib.sha256(data).hexdigest() != record.get("weights_sha256"):
        return None
    try:
        net.load_state_dict(load_safetensors(data), strict=True)
    except (SafetensorError, RuntimeError, ValueError):  # unreadable, or tensors of other shapes: train again
        return None
    if not isinstance(record.get("test_accuracy"), int | float):
        return None
    return record


def feature_classifier(
    train: Dataset, test: Dataset, cache_dir: str | Path | None, *, settings: ClassifierSettings | None = None,
    device: str | torch.device = "cpu", on_step: Callable[[int, int], None] | None = None,
) -> FeatureClassifier:
    """The feature classifier of a dataset: loaded from ``cache_dir`` when a valid cache is there
    (checksum, version, data and settings match), else trained on ``train`` (N, D) with its labels
    and written there atomically (weights, then the JSON record that names their sha256).

    Args:
        train, test: labelled image datasets (the test split gives the reported accuracy).
        cache_dir: the folder of the cache (the user's ``<data_dir>/<name>``), created when
            missing; None keeps the classifier in memory only. A folder that cannot be written
            is warned about (``VaelabWarning``), and the classifier is used all the same.
        settings: architecture and training budget (default ``ClassifierSettings()``).
        device: where it is trained and run.
        on_step: called as ``on_step(step, total)`` while training.
    """
    settings = ClassifierSettings() if settings is None else settings
    settings.check()
    n_classes = _check_labelled(train, test)
    key = _data_key(train, test, settings)
    net = _build(train, n_classes, settings)
    names = list(train.label_names) if train.label_names else [str(i) for i in range(n_classes)]
    folder = None if cache_dir is None else Path(cache_dir).expanduser()
    weights_path = json_path = None
    if folder is not None:
        weights_path = folder / f"{CACHE_PREFIX}-{key[:16]}.safetensors"
        json_path = weights_path.with_suffix(".json")
        record = _load_cached(json_path, weights_path, net, key)
        if record is not None:
            net.to(device).eval()
            return FeatureClassifier(net, names, float(record["test_accuracy"]), weights_path, False, record)
    started = time.perf_counter()
    _train(net, train, settings, torch.device(device), on_step)
    assert test.labels is not None
    accuracy = _accuracy(net, test.x, test.labels)
    record = {
        "format": "vaelab feature classifier", "version": CACHE_VERSION, "dataset": train.name,
        "image_shape": list(train.image_shape or ()), "label_names": names, "n_train": len(train),
        "n_test": len(test), "test_accuracy": accuracy, "settings": asdict(settings),
        "train_seconds": round(time.perf_counter() - started, 3), "device": str(torch.device(device)),
        "data_sha256": key,
    }
    if folder is None or weights_path is None or json_path is None:
        return FeatureClassifier(net, names, accuracy, None, True, record)
    from safetensors.torch import save as save_safetensors

    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})
    record["weights"] = weights_path.name
    record["weights_sha256"] = hashlib.sha256(data).hexdigest()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(weights_path, data)
        write_json(json_path, record)  # last: the record names the weights' checksum
    except (OSError, WriteError) as err:
        warnings.warn(f"could not cache the feature classifier in {folder} ({err}); it is used all the same, "
                      "and trained again next time (point --data-dir or VAELAB_DATA_DIR at a writable folder)",
                      VaelabWarning, stacklevel=2)
        return FeatureClassifier(net, names, accuracy, None, True, record)
    return FeatureClassifier(net, names, accuracy, weights_path, True, record)


# ---------------------------------------------------------------------------------------------
# A model's samples against the test split
# ---------------------------------------------------------------------------------------------


def check_quality_samples(n_samples: Any) -> int:
    """``n_samples`` as a valid number of samples (``--quality-samples``), refused otherwise."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or not \
            K_PRECISION < n_samples <= MAX_QUALITY_SAMPLES:
        raise QualityError(f"quality samples must be an integer from {K_PRECISION + 1} to {MAX_QUALITY_SAMPLES:,} "
                           f"(the default is {DEFAULT_QUALITY_SAMPLES:,}), got {n_samples!r}")
    return n_samples


@torch.no_grad()
def _draw(model: LatentModel, n: int, c: Tensor | None, generator: torch.Generator, batch_size: int) -> Tensor:
    """n decoder means E[x|z, c], z ~ p(z|c), clipped to [0, 1]: (n, D) on the CPU."""
    parts = []
    for start in range(0, n, batch_size):
        cb = None if c is None else c[start:start + batch_size]
        b = min(batch_size, n - start)
        parts.append(model.sample(b, cb, generator=generator).clamp(0.0, 1.0).float().cpu())
    return torch.cat(parts)


def sample_quality(
    model: LatentModel, train: Dataset, test: Dataset, *, n_samples: int = DEFAULT_QUALITY_SAMPLES,
    seed: int = 0, condition: Condition | None = None, cache_dir: str | Path | None = None,
    settings: ClassifierSettings | None = None, batch_size: int = 1000,
    on_phase: Callable[[str], None] | None = None, classifier_test: Dataset | None = None,
) -> dict[str, Any]:
    """Sample quality of ``model`` on an image dataset (see the module's docstring for the protocol).

    Args:
        model: the trained model; its samples are decoder means, clipped to [0, 1].
        train: the labelled training split (grey levels), on which the feature classifier learns.
        test: the test split (grey levels, not binarized): the real images.
        n_samples: samples drawn (default 10,000).
        seed: seed of the samples' generator (the run's evaluation seed).
        condition: a conditional run's condition; c is that of randomly chosen test points, and label
            conditions add ``class_accuracy``.
        cache_dir: where the feature classifier is cached (see ``feature_classifier``).
        settings: the classifier's settings.
        on_phase: told what is being done ("feature classifier", "samples", "distances").
        classifier_test: the split on which the classifier's accuracy is measured (default ``test``;
            ``evaluate_run`` passes the whole test split when the run evaluates on a part of it).

    Returns:
        ``{"n_samples", "n_test", "samples", "fd", "precision", "recall", "density", "coverage",
        "floor": {same five, "n_per_half"}, "classifier": {...}}`` and, for label conditions,
        ``"class_accuracy": {"per_class": {label: share}, "overall": mean over labels}``.

    Raises:
        QualityError: too few test points, unlabelled data, bad ``n_samples``, data that is not
            the model's width.
    """
    n_samples = check_quality_samples(n_samples)
    if test.image_shape is None:
        raise QualityError(f"{test.name}: sample quality is measured on image data only")
    if len(test) < MIN_TEST_POINTS:
        raise QualityError(f"{test.name}: the test split has {len(test)} images; sample quality needs at least "
                           f"{MIN_TEST_POINTS} (it is halved for the floor, and each half needs more than "
                           f"k = {K_DENSITY} points)")
    if test.dim != model.x_dim:
        raise QualityError(f"{test.name}: the images have {test.dim} pixels, the model {model.x_dim}")
    check_fits(float(n_samples) * (model.x_dim + model.latent_dim) * FLOAT_BYTES * 2,
               f"{n_samples:,} samples for sample quality", "use a smaller --quality-samples")
    device = next(model.parameters()).device
    say = on_phase or (lambda _: None)
    say("feature classifier")
    classifier = feature_classifier(train, test if classifier_test is None else classifier_test, cache_dir,
                                    settings=settings, device=device)

    say("samples")
    generator = torch.Generator(device=device).manual_seed(seed)
    c = labels = None
    if condition is not None:
        # Each sample takes the condition of a random test point (all of them once, in a seeded
        # order, then again): the samples' conditions follow the test split's.
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
        rows = order[torch.arange(n_samples) % len(test)]
        raw = condition.values(test)[rows]
        c = condition.encode(raw).to(device)
        labels = raw if condition.labels is not None else None
    model.eval()
    x_fake = _draw(model, n_samples, c, generator, batch_size)

    say("distances")
    real = classifier.features(test.x)
    fake = classifier.features(x_fake)
    halves = torch.randperm(len(test), generator=torch.Generator().manual_seed(FLOOR_SEED))
    half = len(test) // 2
    out: dict[str, Any] = {
        "n_samples": n_samples, "n_test": len(test),
        "samples": "decoder means E[x|z], z ~ p(z), clipped to [0, 1]" if condition is None
        else "decoder means E[x|z, c], z ~ p(z|c), c of random test points, clipped to [0, 1]",
        **quality_metrics(real, fake),
        "floor": {**quality_metrics(real[halves[:half]], real[halves[half:2 * half]]), "n_per_half": half},
        "classifier": {"test_accuracy": classifier.test_accuracy, "feature_dim": classifier.net.head.in_features,
                       "path": None if classifier.path is None else str(classifier.path),
                       "trained_now": classifier.trained,
                       "settings": classifier.record.get("settings", {})},
    }
    if labels is not None and condition is not None and condition.labels is not None:
        if list(condition.labels) == list(classifier.label_names):
            predicted = classifier.predict(x_fake)
            per_class = {name: float((predicted[labels == k] == k).double().mean())
                         for k, name in enumerate(condition.labels) if bool((labels == k).any())}
            out["class_accuracy"] = {"per_class": per_class,
                                     "overall": float(sum(per_class.values()) / max(1, len(per_class)))}
    return out

