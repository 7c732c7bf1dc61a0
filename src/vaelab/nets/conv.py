"""Convolutional encoder / decoder bodies for flattened images.

The classic 28x28 VAE architecture (as in many course notebooks and pytorch/examples):

    encoder: (B, 1, 28, 28) -conv 3x3/2-> (B, 8, 14, 14) -conv-> (B, 16, 7, 7) -conv-> (B, 32, 4, 4)
             -> flatten (B, 512) [+ condition] -> Linear -> (B, out_dim)   (2d outputs: μ, log σ²)
    decoder: (B, d) [+ condition] -> Linear -> (B, 512) -> (B, 32, 4, 4)
             -deconv 3x3/2-> (B, 16, 7, 7) -deconv-> (B, 8, 14, 14) -deconv-> (B, P·C, 28, 28)

Both take and return *flattened* tensors, like the MLPs, so the models, objectives and
training loop do not know which body they use. Conditions are extra columns: the encoder
reads the first C·H·W columns of its input as the image and concatenates the rest after the
conv trunk; the decoder's linear layer reads z and the condition together.

Any (C, H, W) works: the spatial sizes are computed layer by layer (``conv_sizes``) and the
transposed convolutions get the ``output_padding`` that restores them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import InputError
from vaelab.nets.mlp import activation_layer

KERNEL, STRIDE, PADDING = 3, 2, 1


def image_shape_for(x_dim: int) -> tuple[int, int, int]:
    """(C, H, W) of a flattened square image of ``x_dim`` values: grey (1, s, s) or RGB (3, s, s).

    Exactly one of the two can fit (3·s² is never a perfect square), so the answer is unique.
    """
    s = math.isqrt(x_dim)
    if s * s == x_dim:
        return (1, s, s)
    s = math.isqrt(x_dim // 3)
    if x_dim % 3 == 0 and s * s * 3 == x_dim:
        return (3, s, s)
    raise InputError(
        f"net=conv and net=resconv need square images, but the data has {x_dim} dimensions, which is neither "
        "s*s (grey) nor 3*s*s (RGB); use net=mlp for non-image data"
    )


def conv_sizes(size: int, layers: int) -> list[int]:
    """Spatial size after each stride-2 conv: [size, ⌊(size+2p-k)/s⌋+1, ...] (layers + 1 values)."""
    sizes = [size]
    for _ in range(layers):
        sizes.append((sizes[-1] + 2 * PADDING - KERNEL) // STRIDE + 1)
    return sizes


def _check_channels(channels: Sequence[int]) -> list[int]:
    channels = list(channels)
    if not channels or any(c <= 0 for c in channels):
        raise InputError(f"conv channels must be non-empty and positive, got {channels}")
    return channels


def _geometry(image_shape: Sequence[int], channels: Sequence[int]) -> tuple[tuple[int, int, int], list[int],
                                                                          list[int], list[int]]:
    """(C, H, W), the checked channels, and the heights and widths after each stride-2 conv."""
    c, h, w = (int(v) for v in image_shape)
    channels = _check_channels(channels)
    return (c, h, w), channels, conv_sizes(h, len(channels)), conv_sizes(w, len(channels))


def split_rows(inputs: Tensor, image_shape: tuple[int, int, int], extra_dim: int,
               who: str) -> tuple[torch.Size, Tensor, Tensor | None]:
    """(..., C·H·W + extra_dim) rows -> (their leading shape, the images (N, C, H, W), the condition
    columns (N, extra_dim) or None); a row of another width is refused, naming ``who`` expects what."""
    d_img = math.prod(image_shape)
    if inputs.shape[-1] != d_img + extra_dim:
        raise InputError(f"{who} expects {d_img} image values + {extra_dim} condition values per row, "
                         f"got {inputs.shape[-1]}")
    flat = inputs.reshape(-1, inputs.shape[-1])  # (N, C·H·W + extra)
    return inputs.shape[:-1], flat[:, :d_img].reshape(-1, *image_shape), flat[:, d_img:] if extra_dim else None


def upsampling(c_in: int, c_out: int, hs: Sequence[int], ws: Sequence[int], j: int) -> nn.ConvTranspose2d:
    """The transposed conv from the sizes (hs[j+1], ws[j+1]) back to (hs[j], ws[j]). It maps size s
    to 2s - 1 + output_padding: the padding (0 or 1) lands exactly on the encoder's size at the same
    depth (4 -> 7 -> 14 -> 28 for 28x28)."""
    pad = (hs[j] - (2 * hs[j + 1] - 1), ws[j] - (2 * ws[j + 1] - 1))
    return nn.ConvTranspose2d(c_in, c_out, KERNEL, STRIDE, PADDING, output_padding=pad)


class ConvEncoder(nn.Module):
    """(..., C·H·W + extra_dim) -> (..., out_dim): conv trunk on the image, linear head after.

    Args:
        image_shape: (C, H, W) of one image.
        out_dim: outputs of the linear head (2d for a VAE: μ and the scale parameter).
        extra_dim: width of the condition appended after the flattened image (0: none).
        channels: output channels of each stride-2 3x3 convolution.
        activation: nonlinearity after each convolution.
    """

    def __init__(
        self, image_shape: Sequence[int], out_dim: int, extra_dim: int = 0,
        channels: Sequence[int] = (8, 16, 32), activation: str = "relu",
    ) -> None:
        super().__init__()
        self.image_shape, channels, hs, ws = _geometry(image_shape, channels)
        c = self.image_shape[0]
        self.extra_dim = extra_dim
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, KERNEL, STRIDE, PADDING), activation_layer(activation)]
        self.trunk = nn.Sequential(*layers)
        self.features = channels[-1] * hs[-1] * ws[-1]  # 32·4·4 = 512 for 28x28
        self.head = nn.Linear(self.features + extra_dim, out_dim)

    def forward(self, inputs: Tensor) -> Tensor:
        lead, image, extra = split_rows(inputs, self.image_shape, self.extra_dim, "ConvEncoder")  # (N, C, H, W)
        h = self.trunk(image).flatten(1)  # (N, 512)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)  # (N, 512 + extra)
        return self.head(h).reshape(*lead, -1)  # (..., out_dim)


class ConvDecoder(nn.Module):
    """(..., in_dim) -> (..., P·C·H·W): linear to the smallest feature map, then transposed convs.

    The output is flattened channel-major, (P, C, H, W) -> P·C·H·W, so a likelihood with P
    parameters per pixel (Gaussian mean and log-variance: P = 2) can split it with
    ``chunk(P, dim=-1)`` into P flattened images, like an MLP decoder's output.

    Args:
        in_dim: latent dimension d plus the condition width.
        image_shape: (C, H, W) of one image.
        params_per_dim: P, likelihood parameters per pixel.
        channels: channels of the encoder's convolutions, which the decoder mirrors.
        activation: nonlinearity after the linear layer and each inner transposed conv.
    """

    def __init__(
        self, in_dim: int, image_shape: Sequence[int], params_per_dim: int = 1,
        channels: Sequence[int] = (8, 16, 32), activation: str = "relu",
    ) -> None:
        super().__init__()
        self.image_shape, channels, hs, ws = _geometry(image_shape, channels)
        c = self.image_shape[0]
        self.params_per_dim = params_per_dim
        self.start = (channels[-1], hs[-1], ws[-1])  # (32, 4, 4)
        self.linear = nn.Sequential(
            nn.Linear(in_dim, math.prod(self.start)), activation_layer(activation)
        )
        outs = [*reversed(channels[:-1]), params_per_dim * c]  # 16, 8, P·C
        layers: list[nn.Module] = []
        c_in = channels[-1]
        for i, c_out in enumerate(outs):
            layers.append(upsampling(c_in, c_out, hs, ws, len(channels) - 1 - i))
            if i < len(outs) - 1:
                layers.append(activation_layer(activation))
            c_in = c_out
        self.deconv = nn.Sequential(*layers)

    def forward(self, inputs: Tensor) -> Tensor:
        lead = inputs.shape[:-1]
        h = self.linear(inputs.reshape(-1, inputs.shape[-1])).reshape(-1, *self.start)  # (N, 32, 4, 4) at 28x28
        if not torch.is_grad_enabled():
            # Without autograd (evaluation, sampling), in channels-last layout: oneDNN's transposed
            # convolutions run on it natively, while from the default layout each layer first copies
            # its input; the same numbers (to float rounding; identical on the MNIST decoder), ~2x
            # faster on the thousands of decoded z of IWAE evaluation. Training keeps the default
            # layout: its backward rounds differently in channels-last (the seeded weights would
            # change) and at batch 128 it gains nothing.
            h = h.contiguous(memory_format=torch.channels_last)
        out = self.deconv(h)  # (N, P·C, H, W)
        return out.reshape(*lead, -1)  # (..., P·C·H·W)
