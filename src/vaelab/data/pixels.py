"""Pixel handling for image data: which binarization a run uses, and drawing it.

Images arrive as grey levels in [0, 1]. A Bernoulli likelihood p(x|z) is a distribution over
{0, 1}, so its data must be binary; the two classic ways to get there are

* **dynamic** binarization: every epoch draws x_bin ~ Bernoulli(x) afresh (Salakhutdinov &
  Murray 2008; used by IWAE, Burda et al. 2016). The model sees a new binary image of every
  digit each epoch, which acts as data augmentation and reduces overfitting.
* **fixed** binarization: one draw, made once with a seeded generator and kept.

Either way the *test* set is binarized once with a fixed seed (for ``dynamic`` as well), so
that every evaluation of every model scores the same binary images.

``binarize = "auto"`` resolves to ``dynamic`` for a Bernoulli likelihood on image data and to
``none`` otherwise (Gaussian likelihoods model the grey levels themselves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from vaelab.data.dataset import Dataset
from vaelab.errors import InputError

if TYPE_CHECKING:
    from vaelab.config import RunConfig

Binarization = Literal["none", "dynamic", "fixed"]

# Seeds of the fixed draws: far from the small seeds users pick, different for the two splits.
_FIXED_TRAIN_SEED = 7_919
_FIXED_TEST_SEED = 104_729


def resolve_binarize(config: RunConfig, data: Dataset) -> Binarization:
    """The binarization a run uses on ``data``: the configured one, with ``auto`` resolved.

    Raises:
        ValueError: a Bernoulli likelihood on grey levels (binarize = none) or a binarization
            of data that is not in [0, 1]; the message says what to change.
    """
    mode = config.data.binarize
    bernoulli = config.model.likelihood == "bernoulli"
    if mode == "auto":
        mode = "dynamic" if bernoulli and data.image_shape is not None else "none"
    if mode == "none" and bernoulli and not is_binary(data.x):
        raise InputError(
            f"the Bernoulli likelihood is a distribution over {{0, 1}}, but {data.name} has "
            "grey levels; use --binarize dynamic (or fixed), or a grey-level likelihood (--likelihood logistic256 "
            "for 8-bit images; gaussian-learned, gaussian-sigmoid or continuous-bernoulli)"
        )
    if mode != "none" and data.image_shape is None and config.model.net in ("conv", "resconv"):
        # An image preset (mnist-conv) on points: --binarize none would only lead to the next
        # refusal, conv nets need images (audit TR64b, SW35b).
        raise InputError(
            f"{data.name} holds points of {data.dim} values, not images, but this configuration is for images "
            f"(--net {config.model.net}, binarize={mode}: what the mnist-conv preset sets); drop --preset (and "
            f"--net {config.model.net} / --binarize), or train on an image dataset"
        )
    if mode != "none" and (float(data.x.min()) < 0.0 or float(data.x.max()) > 1.0):
        raise InputError(
            f"binarize={mode} draws pixels as Bernoulli(x) and needs x in [0, 1], but {data.name} "
            f"ranges over [{float(data.x.min()):.3g}, {float(data.x.max()):.3g}]; "
            "use --binarize none"
        )
    return mode


def is_binary(x: Tensor) -> bool:
    """True when every value of x is 0 or 1."""
    return bool(((x == 0) | (x == 1)).all())


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw x_bin ~ Bernoulli(x), elementwise: (N, D) in [0, 1] -> (N, D) in {0, 1}.

    Drawn as 1[u < x] with u ~ U(0, 1): the same distribution as ``torch.bernoulli`` and,
    on CPU, about twice as fast, which matters when every epoch redraws 60,000 images.
    """
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    # In place, in x's dtype: 1.0 where u < x, else 0.0; no boolean mask and no conversion pass
    # (~4 % of a binarized MNIST epoch).
    return u.lt_(x)


def fixed_binarization(x: Tensor, split: Literal["train", "test"], seed: int = 0) -> Tensor:
    """The fixed draw of one split: the same bits every time for the same (split, seed)."""
    base = _FIXED_TRAIN_SEED if split == "train" else _FIXED_TEST_SEED
    generator = torch.Generator(device=x.device).manual_seed(base + seed)
    return binarize(x, generator)


def eval_view(config: RunConfig, data: Dataset) -> tuple[Dataset, str]:
    """The test data as a run's model is scored on it, and a note for metrics.json.

    A model trained on binarized pixels (dynamic or fixed) is evaluated on the fixed,
    seeded binarization of the test split; other models on the data as it is.
    """
    mode = resolve_binarize(config, data)
    if mode == "none":
        return data, "none"
    x = fixed_binarization(data.x, "test", config.data.seed)
    view = Dataset(name=data.name, x=x, labels=data.labels, label_names=data.label_names,
                   image_shape=data.image_shape, extras=dict(data.extras))
    return view, f"fixed (test draw, seed {config.data.seed}; training used {mode})"


def train_pixels(config: RunConfig, data: Dataset) -> Tensor:
    """The training points x (N, D) as a run's training loop takes them: the fixed training draw
    for ``fixed``; the grey levels themselves for ``dynamic`` (each epoch draws from them) and
    ``none``."""
    if resolve_binarize(config, data) == "fixed":
        return fixed_binarization(data.x, "train", config.data.seed)
    return data.x
