"""Conv encoder / decoder: shapes for any square image, conditions, leading sample dims, and a
conv VAE that learns on digits."""

from __future__ import annotations

import pytest
import torch

from vaelab.config import ModelConfig, TrainConfig
from vaelab.data.digits import load_digits
from vaelab.models import build_model
from vaelab.nets import ConvDecoder, ConvEncoder, build_decoder, build_encoder, image_shape_for
from vaelab.nets.conv import conv_sizes
from vaelab.objectives import elbo
from vaelab.train import fit


def test_classic_28x28_shapes():
    # The classic architecture: 28 -> 14 -> 7 -> 4, so 32 x 4 x 4 = 512 features.
    assert conv_sizes(28, 3) == [28, 14, 7, 4]
    enc = ConvEncoder((1, 28, 28), out_dim=64)
    assert enc.features == 512
    assert enc(torch.rand(5, 784)).shape == (5, 64)
    dec = ConvDecoder(32, (1, 28, 28), params_per_dim=2)
    assert dec.start == (32, 4, 4)
    assert dec(torch.randn(5, 32)).shape == (5, 2 * 784)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 16, 16), (1, 5, 5), (1, 9, 12)])
def test_decoder_restores_every_size(shape):
    c, h, w = shape
    enc = ConvEncoder(shape, out_dim=6)
    dec = ConvDecoder(3, shape)
    assert enc(torch.rand(2, c * h * w)).shape == (2, 6)
    out = dec(torch.randn(2, 3))
    assert out.shape == (2, c * h * w)


@pytest.mark.parametrize("image_shape, params_per_dim", [((1, 28, 28), 1), ((3, 8, 8), 2)])
def test_decoding_without_autograd_gives_the_numbers_of_the_autograd_path(image_shape, params_per_dim):
    """Without autograd the decoder runs in channels-last layout (faster transposed convolutions):
    the same values, flattened in the same channel-major order (P, C, H, W), as the default layout
    that training differentiates, for grey and RGB images with one or two parameters per value."""
    torch.manual_seed(0)
    dec = ConvDecoder(6, image_shape, params_per_dim=params_per_dim, channels=(4, 8))
    z = torch.randn(3, 40, 6)  # (k, B, d)
    with torch.no_grad():
        fast = dec(z)
    reference = dec(z)  # autograd on: the default layout
    assert reference.requires_grad and not fast.requires_grad
    c, h, w = image_shape
    assert fast.shape == reference.shape == (3, 40, params_per_dim * c * h * w)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-6, atol=1e-6)


def test_leading_sample_dims_and_condition():
    enc = ConvEncoder((1, 8, 8), out_dim=4, extra_dim=10)
    dec = ConvDecoder(2 + 10, (1, 8, 8))
    x_c = torch.rand(7, 3, 64 + 10)  # (k, B, D + C), as the IWAE bound decodes
    assert enc(x_c).shape == (7, 3, 4)
    assert dec(torch.randn(7, 3, 12)).shape == (7, 3, 64)
    # The condition columns reach the output: changing only them changes the code.
    x = torch.rand(1, 64 + 10)
    x2 = x.clone()
    x2[0, 64:] += 1.0
    assert not torch.allclose(enc(x), enc(x2))
    with pytest.raises(ValueError, match="64 image values"):
        enc(torch.rand(2, 64))


def test_image_shape_inference():
    assert image_shape_for(784) == (1, 28, 28)
    assert image_shape_for(3 * 32 * 32) == (3, 32, 32)
    with pytest.raises(ValueError, match="square images"):
        image_shape_for(2)


def test_factory_follows_config():
    cfg = ModelConfig(net="conv", latent_dim=3, likelihood="bernoulli")
    assert isinstance(build_encoder(cfg, 784, 0, 6), ConvEncoder)
    assert isinstance(build_decoder(cfg, 3, 784, 1), ConvDecoder)
    assert not isinstance(build_encoder(ModelConfig(), 784, 0, 6), ConvEncoder)


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_conv_models_conditional(kind):
    model = build_model(ModelConfig(kind=kind, net="conv", latent_dim=4, likelihood="bernoulli"), 64,
                        cond_dim=10, seed=0)
    x = torch.bernoulli(torch.rand(5, 64))
    c = torch.nn.functional.one_hot(torch.arange(5), 10).float()
    assert model.embed(x, c).shape == (5, 4)
    assert model.decode(torch.randn(2, 5, 4), c).batch_shape == (2, 5)
    assert model.reconstruct(x, c).shape == (5, 64)


def test_conv_vae_learns_digits():
    torch.manual_seed(0)
    data = load_digits("train", size=8)
    x = torch.bernoulli(data.x, generator=torch.Generator().manual_seed(0))
    model = build_model(ModelConfig(net="conv", latent_dim=8, likelihood="bernoulli", activation="relu"), 64,
                        seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        before = float(elbo(model, x, generator=g).elbo)
    history = fit(model, x, TrainConfig(epochs=4, batch_size=64, lr=3e-3, diversity_samples=32))
    with torch.no_grad():
        after = float(elbo(model, x, generator=torch.Generator().manual_seed(1)).elbo)
    assert history.last["epoch"] == 4
    assert after > before + 5.0  # nats per image: a real improvement, not noise
