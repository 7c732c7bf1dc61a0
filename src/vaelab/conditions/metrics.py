"""How well a conditional model follows its condition: conditioning accuracy of labels
(with the classifier that judges it) and radius tracking of a continuous radius."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from vaelab.conditions.spec import Condition, ConditionError
from vaelab.data.dataset import Dataset
from vaelab.data.toy2d import mode_means

if TYPE_CHECKING:
    from vaelab.models import LatentModel

# Toy mixtures whose modes are known exactly: their samples are classified by nearest mode.
GMM_DATASETS = ("2gmm", "radial_gmm", "ring")


@dataclass
class LabelClassifier:
    """A classifier of data points used to check that samples follow their label.

    predict: x (M, D) -> predicted labels (M,). test_accuracy: its accuracy on held-out
    data, the ceiling of any conditioning accuracy measured with it.
    """

    description: str
    predict: Callable[[Tensor], Tensor]
    test_accuracy: float | None = None


def label_classifier(train: Dataset, test: Dataset | None = None, *, max_train: int = 10_000) -> LabelClassifier:
    """The classifier for conditioning accuracy on ``train``'s labels.

    The toy Gaussian mixtures (2gmm, radial_gmm, ring) use the exact nearest mode, with
    no training. Images use multinomial logistic regression on the pixels; other points a
    5-nearest-neighbour vote; both are fitted on the training split (scikit-learn), on a
    fixed random subset of ``max_train`` points when it is larger (MNIST: 60,000 -> 10,000,
    which changes the classifier's accuracy little and its fitting time a lot).
    """
    if train.labels is None:
        raise ConditionError(f"{train.name}: has no labels, so there is nothing to classify")
    if train.name in GMM_DATASETS and train.dim == 2:
        means = mode_means(train.name)  # (K, 2)

        def nearest(x: Tensor) -> Tensor:
            return torch.cdist(x.float().cpu(), means).argmin(dim=1)

        clf = LabelClassifier("nearest mode of the mixture", nearest)
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier

        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:max_train]
        xs, ys = train.x[rows].double().cpu().numpy(), train.labels[rows].cpu().numpy()
        if train.image_shape is not None:
            model: Any = LogisticRegression(max_iter=300, C=0.1)
            description = "logistic regression on pixels (training split)"
        else:
            model = KNeighborsClassifier(n_neighbors=min(5, len(xs)))
            description = "5-nearest-neighbour vote (training split)"
        with warnings.catch_warnings():  # few rows per label: fit_condition has said so in vaelab's words
            warnings.filterwarnings("ignore", "The number of unique classes is greater than", UserWarning)
            model.fit(xs, ys)

        def fitted(x: Tensor) -> Tensor:
            return torch.as_tensor(model.predict(x.double().cpu().numpy()), dtype=torch.int64)

        clf = LabelClassifier(description, fitted)
    if test is not None and test.labels is not None and len(test):
        clf.test_accuracy = float((clf.predict(test.x) == test.labels.cpu()).double().mean())
    return clf


@torch.no_grad()
def conditioning_accuracy(
    model: LatentModel, condition: Condition, classifier: LabelClassifier, *, n_per_class: int = 500,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Share of samples drawn for label k that the classifier assigns to k, per label.

    For every label k: z ~ N(0, I), x = decoder mean of p(x|z, c = onehot(k)) (n_per_class
    of them), then the classifier's verdict. Returns ``overall`` (mean over labels),
    ``per_class`` {label name: share}, ``classifier`` and ``n_per_class``.
    """
    if condition.labels is None:
        raise ConditionError("conditioning accuracy needs a label condition")
    ref = next(model.parameters())
    per_class: dict[str, float] = {}
    for k, name in enumerate(condition.labels):
        c = condition.encode(torch.tensor([k])).to(ref.device)  # (1, K), broadcast over samples
        x = model.sample(n_per_class, c, generator=generator)
        per_class[name] = float((classifier.predict(x) == k).double().mean())
    out: dict[str, Any] = {
        "overall": float(np.mean(list(per_class.values()))), "per_class": per_class,
        "classifier": classifier.description, "n_per_class": n_per_class,
    }
    if classifier.test_accuracy is not None:
        out["classifier_test_accuracy"] = classifier.test_accuracy
    return out


@torch.no_grad()
def radius_tracking(
    model: LatentModel, condition: Condition, radii: Sequence[float] | None = None, *,
    n: int = 500, generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Mean radius ‖x‖ at each requested radius, of decoder means E[x|z, c] and of samples
    x ~ p(x|z, c) (with the observation noise), z ~ p(z).

    Both are reported because they can tell different stories: decoder means may sit on a
    segment near the origin while the noisy samples do follow the radius (a decoder that
    explains the ring by its noise, as an isotropic blob of the right size). ``radii`` default
    to 6 values evenly over the middle 90% of the training range.

    Returns ``requested``; for the decoder means ``mean_radius``, ``std_radius`` (lists) and
    ``mean_abs_error`` = mean over requested r of |mean radius − r|; the same for the noisy
    samples as ``sample_mean_radius``, ``sample_std_radius`` and ``sample_mean_abs_error``.
    The means are drawn first, for every radius, then the samples (new draws of z), so the
    decoder-mean numbers are those this function gave before it measured the samples too.
    """
    if condition.kind != "radius":
        raise ConditionError(f"radius tracking needs a radius condition, this run has {condition.kind}")
    assert condition.low is not None and condition.high is not None
    if radii is None:
        lo, hi = condition.low[0], condition.high[0]
        pad = 0.05 * (hi - lo)
        radii = torch.linspace(lo + pad, hi - pad, 6).tolist()
    ref = next(model.parameters())
    out: dict[str, Any] = {"requested": [float(r) for r in radii]}
    for prefix, noise in (("", False), ("sample_", True)):
        means, stds = [], []
        for r in radii:
            c = condition.encode(torch.tensor([[float(r)]])).to(ref.device)
            radius = model.sample(n, c, generator=generator, noise=noise).norm(dim=1)
            means.append(float(radius.mean()))
            stds.append(float(radius.std()))
        errors = [abs(m - r) for m, r in zip(means, radii, strict=True)]
        out |= {f"{prefix}mean_radius": means, f"{prefix}std_radius": stds,
                f"{prefix}mean_abs_error": float(np.mean(errors))}
    return out


def conditional_metrics(
    model: LatentModel, condition: Condition, train: Dataset, test: Dataset, *, seed: int = 0,
    n_per_class: int = 500,
) -> dict[str, Any]:
    """What evaluation adds for a conditional run: ``condition`` (its description), and
    ``conditioning_accuracy`` (labels) or ``radius_tracking`` (radius)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    out: dict[str, Any] = {"condition": condition.describe()}
    if condition.labels is not None:
        classifier = label_classifier(train, test)
        out["conditioning_accuracy"] = conditioning_accuracy(
            model, condition, classifier, n_per_class=n_per_class, generator=generator)
    elif condition.kind == "radius":
        out["radius_tracking"] = radius_tracking(model, condition, n=n_per_class, generator=generator)
    return out
