"""Named evaluation protocols: a published (or vaelab's own) held-out evaluation stated in full.

A protocol fixes what makes a number comparable with another: the dataset and its split, the
test images and how their pixels are binarized, the likelihood the model must have, the number
of importance samples k of the IWAE bound (Burda et al. 2016, eq. 8) and the evaluation seed.
``vaelab eval RUN --protocol NAME`` (``vaelab.evaluate.evaluate_run(run, protocol=NAME)``)
applies these settings, refuses a run that cannot follow them, and records the protocol in
``metrics.json`` beside the numbers (``"protocol": {name, description, source, settings}``).

Only what can be checked is stated: a paper's protocol says "as described in" and names the
section; where the paper leaves a detail open, the field says what vaelab does instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vaelab.errors import InputError


@dataclass(frozen=True)
class Protocol:
    """One named evaluation.

    Attributes:
        name: the name ``--protocol`` takes.
        description: what it is, in words.
        source: the paper, section and table it comes from, or "vaelab's own".
        dataset: the registered dataset a run must be trained on (``--data``).
        image_split: the run's ``--image-split`` (``official``: the published train/test files;
            ``test-9k``: the MNIST test file split 9,000 / 1,000).
        split: the test images, in words.
        n_test: how many test images are scored: the first ``n_test`` of the split's test part,
            whatever ``--limit-test`` the run was trained with.
        likelihood: the decoder a run must have: ``bernoulli`` (binary pixels, log p(x) of a
            binary image).
        train_binarization: the training binarization a run must have used (``dynamic``: a new
            Bernoulli draw every epoch), or None for any.
        test_binarization: how the test pixels are made binary, in words.
        k: importance samples of the IWAE bound per test image.
        seed: the evaluation seed (the importance samples' noise).
    """

    name: str
    description: str
    source: str
    dataset: str
    image_split: Literal["official", "test-9k"]
    split: str
    n_test: int
    likelihood: Literal["bernoulli"]
    train_binarization: Literal["dynamic", "fixed"] | None
    test_binarization: str
    k: int
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The settings as metrics.json records them."""
        return {"dataset": self.dataset, "image_split": self.image_split, "split": self.split,
                "n_test": self.n_test, "likelihood": self.likelihood,
                "train_binarization": self.train_binarization or "any",
                "test_binarization": self.test_binarization, "k": self.k, "seed": self.seed}

    def record(self) -> dict[str, Any]:
        """``metrics["protocol"]``: name, description, source and settings."""
        return {"name": self.name, "description": self.description, "source": self.source,
                "settings": self.settings()}


# vaelab scores every binarized run on one seeded Bernoulli draw of the test images
# (vaelab.data.pixels.eval_view); a protocol that needs another test binarization would need a
# new test view there first.
_VAELAB_TEST_DRAW = ("each test image binarized once, x_bin ~ Bernoulli(grey level), with a fixed seed "
                     "(vaelab's test draw, seeded by the run's data seed); the same bits for every model")

PROTOCOLS: dict[str, Protocol] = {
    p.name: p for p in (
        Protocol(
            name="iwae-mnist-k5000",
            description="test negative log-likelihood −log p(x) on MNIST, estimated by the IWAE bound with "
                        "k = 5000 importance samples on the 10,000 test images",
            source="Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR: section 5 "
                   "(evaluation as described there: the mean of L_5000 over the test set) and Table 1",
            dataset="mnist",
            image_split="official",
            split="the official MNIST test set (t10k files), all 10,000 images; the model trained on the "
                  "official training images (the paper's code trains on the first 59,600 and validates on the last "
                  "400: --preset iwae-paper does the same)",
            n_test=10_000,
            likelihood="bernoulli",
            train_binarization="dynamic",
            test_binarization=_VAELAB_TEST_DRAW + ". The paper's code does the same (yburda/iwae, iwae.py, "
                              "measure_marginal_log_likelihood: one seeded draw per test image, scored under all k "
                              "samples) with its own generator, so its bits differ from vaelab's, their distribution "
                              "does not",
            k=5000,
        ),
        Protocol(
            name="mnist-test9k-dynamic-k1000",
            description="vaelab's own small check (not a paper's): the IWAE bound with k = 1000 on the 1,000 test "
                        "images of the test-9k split, for runs trained there with dynamic binarization; needs only "
                        "the MNIST t10k files",
            source="vaelab's own (no published numbers)",
            dataset="mnist",
            image_split="test-9k",
            split="test-9k: the last 1,000 images of the official MNIST test file (the first 9,000 train)",
            n_test=1000,
            likelihood="bernoulli",
            train_binarization="dynamic",
            test_binarization=_VAELAB_TEST_DRAW,
            k=1000,
        ),
    )
}


class ProtocolError(InputError):
    """An unknown protocol name, or settings given beside a protocol that fixes them."""


def get_protocol(name: str | Protocol) -> Protocol:
    """The protocol called ``name`` (a ``Protocol`` is returned as it is).

    Raises:
        ProtocolError: no protocol of that name; the message lists the valid ones.
    """
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        valid = "\n".join(f"  {p.name}: {p.description}" for p in PROTOCOLS.values())
        raise ProtocolError(f"unknown protocol {name!r}; the protocols are:\n{valid}\n(see docs/protocols.md)")
    return PROTOCOLS[name]
