"""Named starting configurations for image models: the classic MNIST VAEs of papers and courses.

A preset is a partial configuration, ``{"data": {...}, "model": {...}, "train": {...}}``, laid
over the defaults; a config file and command-line flags then override it. ``vaelab train``
applies :data:`DEFAULT_IMAGE_PRESET` when the data are images and neither ``--preset`` nor
``--config`` chose otherwise, because the library defaults are tuned for 2D points (a learned
Gaussian variance on pixels that are exactly 0 lets the variance shrink without bound, and a
250-epoch budget is meant for 2,000 points, not 60,000 images).

Why Bernoulli + dynamic binarization by default: it is the setting in which the MNIST
likelihoods of the VAE / IWAE literature are reported (≈ 85-90 nats with k = 5000 for
784-400-20-type models trained on the full 60k), so the numbers vaelab prints can be checked
against published ones.

Grey levels (``binarize = "none"``) with a preset's Bernoulli likelihood that the user did not
choose: the Bernoulli is a distribution over {0, 1}, so such a run gets the likelihood vaelab
recommends for grey levels instead (:func:`grey_level_likelihood`): ``logistic256`` on 8-bit
images (MNIST, Fashion-MNIST, KMNIST), which beat every density on the common 256-level scale by
650-760 nats in benchmarks/bench_likelihoods.py and is a probability of the 8-bit image itself;
``gaussian-learned`` elsewhere (data not known to lie on the 256-level grid, which logistic256
refuses). docs/models.md, "Which for grey images", has the measurements.
"""

from __future__ import annotations

from typing import Any

from vaelab.config import RunConfig
from vaelab.errors import InputError

Preset = dict[str, dict[str, Any]]

# The classic recipe, pinned in full so that changes to the 2D defaults (IWAE objective,
# cosine schedule) do not leak into these papers' settings.
_TRAIN = {"objective": "elbo", "beta": 1.0, "lr": 1e-3, "lr_schedule": "constant", "batch_size": 128,
          "epochs": 50, "checkpoint_every": 10}

PRESETS: dict[str, tuple[str, Preset]] = {
    "mnist-mlp-bernoulli": (
        "784-400-20 MLP VAE, Bernoulli logits, dynamic binarization (Kingma & Welling 2014)",
        {
            "data": {"binarize": "dynamic"},
            "model": {"kind": "vae", "net": "mlp", "hidden": [400], "latent_dim": 20,
                      "activation": "relu", "likelihood": "bernoulli"},
            "train": dict(_TRAIN),
        },
    ),
    "mnist-mlp-gaussian": (
        "784-128-128-4 MLP VAE, Gaussian σ² = 1/2 (= summed squared error), grey levels",
        {
            # -log N(x; μ, ½ I) = ‖x - μ‖² + const: the "sum of squared errors" loss of course
            # notebooks, kept as an honest density so its NLL can be reported.
            "data": {"binarize": "none"},
            "model": {"kind": "vae", "net": "mlp", "hidden": [128, 128], "latent_dim": 4,
                      "activation": "relu", "likelihood": "gaussian", "recon_var": 0.5},
            "train": dict(_TRAIN),
        },
    ),
    "mnist-conv": (
        "conv VAE 1→8→16→32 (stride 2) to 32x4x4, latent 32, Bernoulli logits, dynamic binarization",
        {
            "data": {"binarize": "dynamic"},
            "model": {"kind": "vae", "net": "conv", "channels": [8, 16, 32], "latent_dim": 32,
                      "activation": "relu", "likelihood": "bernoulli"},
            "train": dict(_TRAIN),
        },
    ),
    # Burda, Grosse & Salakhutdinov (2016), one stochastic layer, as their code trains it
    # (yburda/iwae: experiments.py, iwae.py, datasets.py, optimizers.py). docs/protocols.md lists
    # what vaelab does not copy (their weight init, unshuffled batches, Adam's first step).
    "iwae-paper": (
        "784-200-200-50 tanh MLP VAE, σ = exp, Bernoulli, batch 20, 3,280 epochs of Burda et al.'s schedule "
        "(Burda et al. 2016, one stochastic layer; add --objective iwae --k 50 for their IWAE)",
        {
            # their training set is the first 59,600 official training images (the last 400 validated)
            "data": {"binarize": "dynamic", "limit_train": 59_600},
            "model": {"kind": "vae", "net": "mlp", "hidden": [200, 200], "latent_dim": 50, "activation": "tanh",
                      "scale": "exp", "likelihood": "bernoulli", "output_bias": "data-mean"},
            # Their Adam adds ε = 1e-4 to the root of the second moment of the batch's *summed*
            # gradient (20 points); vaelab's loss is the batch mean, so the same ε relative to the
            # gradient is 1e-4 / 20. β1 = 0.99 is their code's (optimizers.py).
            "train": {"objective": "elbo", "beta": 1.0, "lr": 1e-3, "lr_schedule": "burda",
                      "adam_betas": [0.99, 0.999], "adam_eps": 1e-4 / 20, "batch_size": 20, "epochs": 3280,
                      "checkpoint_every": 10},
        },
    ),
}

DEFAULT_IMAGE_PRESET = "mnist-mlp-bernoulli"
# The likelihood of grey-level images when the user names none (see the module docstring).
GREY_LIKELIHOOD_8BIT = "logistic256"
GREY_LIKELIHOOD_OTHER = "gaussian-learned"


def preset_overrides(name: str) -> Preset:
    """The partial configuration of preset ``name`` (a fresh copy)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return {section: dict(values) for section, values in PRESETS[name][1].items()}


def apply_preset(config: RunConfig, name: str) -> RunConfig:
    """``config`` with preset ``name`` laid over it. Its values are starting values, like the
    defaults: they do not count as settings the user gave (see ``settings.check_settings``)."""
    return config.with_overrides(preset_overrides(name), explicit=False, source=f"preset {name}")


def grey_level_likelihood(config: RunConfig, *, image: bool, levels: int | None) -> tuple[RunConfig, str | None]:
    """``config`` with the grey-level likelihood in place of a Bernoulli the user did not choose,
    and a sentence that says so; ``(config, None)`` where nothing changes.

    It applies to image data (``image``: ``vaelab.data.registry.is_image_config``) kept as grey
    levels (``data.binarize = "none"``) whose ``model.likelihood`` is ``"bernoulli"`` from a preset
    or the defaults, not from the user (a Bernoulli the user names is kept, and refused on grey data
    with its own message). Data on 256 levels (``levels``: ``vaelab.data.registry.grey_levels``)
    get ``logistic256``, every other image source ``gaussian-learned``. The new value is not marked
    as given by the user (like a preset's), so nothing the user did not say is checked.
    """
    model, data = config.model, config.data
    if data.binarize != "none" or model.likelihood != "bernoulli" or "likelihood" in model.model_fields_set \
            or not image:
        return config, None
    name = GREY_LIKELIHOOD_8BIT if levels == 256 else GREY_LIKELIHOOD_OTHER
    why = ("8-bit grey levels: a probability of each pixel's level" if levels == 256 else
           "grey levels not known to be 8-bit")
    updated = config.with_overrides({"model": {"likelihood": name}}, explicit=False, source="grey-level images")
    return updated, (f"grey-level images (--binarize none): likelihood {name} ({why}) in place of the "
                     "preset's bernoulli, which needs binary pixels; choose with --likelihood")
