"""A small NVAE-style residual conv body (``net = "resconv"``): the conv bodies plus residual cells.

NVAE (Vahdat & Kautz 2020, "NVAE: A Deep Hierarchical Variational Autoencoder", Fig. 3 and
section 3.1) builds its towers from two residual cells, each ending in squeeze-and-excitation:

    encoder cell:  x + SE(conv3x3(act(conv3x3(act(x)))))                            (Fig. 3b)
    decoder cell:  x + SE(conv1x1(act(dwconv5x5(act(conv1x1_expand(x))))))          (Fig. 3a)

where ``conv1x1_expand`` widens C channels to E·C, ``dwconv5x5`` is a depthwise 5x5 conv (one
filter per channel: a 5x5 receptive field for 25 multiply-adds per channel and pixel), the last conv1x1 narrows
back to C, and SE (Hu et al. 2018) rescales each channel by a gate computed from the whole map.
Here the cells are placed on the skeleton of ``vaelab.nets.conv`` (same geometry, same
``channels``, same flattened interface, same condition columns), one cell per stride-2 stage:

    encoder: (N, C, H, W) -[conv 3x3/2 -> act -> encoder cell] x L -> flatten [+ c] -> Linear
    decoder: [z, c] -> Linear -> act -> (N, c_L, h_L, w_L) -> decoder cell
             -[deconv 3x3/2 -> act -> decoder cell] x (L-1) -> deconv 3x3/2 -> (N, P·C, H, W)

For 28x28 and channels (8, 16, 32) the encoder cells see 14x14x8, 7x7x16 and 4x4x32, and the
decoder's cells the same maps in reverse (4 -> 7 -> 14 -> 28, with ConvDecoder's output_padding).

Three choices differ from NVAE, on purpose:

* **No batch normalisation.** NVAE puts BN in every cell. In training mode BN makes a sample's
  output depend on the other samples of its batch (one image's ELBO would change with the batch it
  is drawn in), and in eval mode it uses running statistics kept as buffers, so the bound that is
  trained is not the bound that is evaluated. It would also break the stacked sweep (torch.func's
  vmap refuses BN's in-place updates of unbatched running statistics, and fit must give the
  stack's numbers) and DDP (each shard normalising by its own statistics unless synchronised).
  At one cell per stage the nets are shallow enough to train without it, and the zero-initialised
  branches below keep the signal scale of the plain conv net at the start.
* **Zero-initialised last layer of each residual branch**, so every cell starts as the identity
  and the whole body starts as exactly the plain ``ConvEncoder`` / ``ConvDecoder`` with the same
  weights (a test checks this). Deep residual nets train more stably when each branch starts
  silent and grows (Goyal et al. 2017's zero-γ; Fixup, Zhang et al. 2019; SkipInit, De & Smith
  2020), and deep hierarchical VAEs do the same (VDVAE, Child 2021, scales the last conv of each
  residual block by √(1/N) for N blocks and zero-initialises it in the prior's): the KL and the
  reconstruction term start where the plain conv net starts, not at the scale of random branches
  added on top, and a test can pin the body to the conv body it extends.
* **Expansion factor 3, not 6** (``DECODER_EXPANSION``). NVAE's cells are 128+ channels wide and
  run on GPUs; here they are 8-64 channels wide on CPUs too, where the depthwise conv's backward
  pass dominates a training step. Measured (forward + backward of the three decoder cells of
  channels (16, 32, 64) at 28x28, batch 128, one thread): E = 1: 29 ms, E = 3: 95 ms, E = 6:
  232 ms, against about 30 ms for a whole plain ConvEncoder + ConvDecoder step. E = 3 keeps the
  inverted bottleneck (a wider map for the depthwise conv than the cell's input) at under half
  of E = 6's cost.

Neither weight normalisation nor NVAE's spectral regulariser is used: both serve stability of
nets much deeper than these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.nets.conv import KERNEL, PADDING, STRIDE, _geometry, split_rows, upsampling
from vaelab.nets.mlp import activation_layer

# E, the expansion factor of the decoder cell's inverted bottleneck (NVAE uses 6; see above).
DECODER_EXPANSION = 3
# The depthwise kernel of the decoder cell (NVAE, Fig. 3a).
DEPTHWISE_KERNEL = 5
# SE's bottleneck: C / 16 hidden units, at least 4 (Hu et al. 2018 use r = 16; NVAE's SE keeps
# max(C // 16, 4) so that the gate of a narrow map still has a few units).
SE_REDUCTION, SE_MIN_HIDDEN = 16, 4


def _zeroed(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with zero weights and bias: the last layer of a residual branch, so that the cell
    x + SE(branch(x)) starts as the identity (SE of a zero map is zero)."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class SqueezeExcite(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): x · σ(W₂ relu(W₁ mean_hw(x))) (Hu et al. 2018, Eq. 2-4).

    The gate is computed per sample from that sample's own map, so SE couples no batch rows.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // SE_REDUCTION, SE_MIN_HIDDEN)
        self.gate = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        s = self.gate(x.mean(dim=(-2, -1)))  # (N, C): squeeze (global average), then excite
        return x * s[:, :, None, None]  # (N, C, H, W)


class EncoderCell(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): x + SE(conv3x3(act(conv3x3(act(x))))) (NVAE Fig. 3b, no BN).

    The second conv starts at zero (weights and bias), so the cell starts as the identity.
    """

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        last = _zeroed(nn.Conv2d(channels, channels, 3, padding=1))
        self.branch = nn.Sequential(
            activation_layer(activation), nn.Conv2d(channels, channels, 3, padding=1),
            activation_layer(activation), last, SqueezeExcite(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class DecoderCell(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): x + SE(conv1x1(act(dwconv5x5(act(conv1x1(x)))))) (NVAE Fig. 3a, no BN).

    The first 1x1 conv expands C to E·C channels (``expansion``), the depthwise 5x5 conv filters
    each of them on its own, the last 1x1 conv narrows back to C; it starts at zero (weights and
    bias), so the cell starts as the identity.
    """

    def __init__(self, channels: int, activation: str, expansion: int = DECODER_EXPANSION) -> None:
        super().__init__()
        wide = expansion * channels
        last = _zeroed(nn.Conv2d(wide, channels, 1))
        self.branch = nn.Sequential(
            nn.Conv2d(channels, wide, 1), activation_layer(activation),
            nn.Conv2d(wide, wide, DEPTHWISE_KERNEL, padding=DEPTHWISE_KERNEL // 2, groups=wide),
            activation_layer(activation), last, SqueezeExcite(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class ResConvEncoder(nn.Module):
    """(..., C·H·W + extra_dim) -> (..., out_dim): ConvEncoder with an encoder cell after each stage.

    Stage i: conv 3x3 stride 2 to ``channels[i]`` -> activation -> ``EncoderCell``; then the
    flattened features (and the condition columns) go through one linear head.

    Args:
        image_shape: (C, H, W) of one image.
        out_dim: outputs of the linear head (2d for a VAE: μ and the scale parameter).
        extra_dim: width of the condition appended after the flattened image (0: none).
        channels: output channels of each stride-2 stage.
        activation: nonlinearity after each stride-2 conv and inside the cells (NVAE: "silu").
    """

    def __init__(
        self, image_shape: Sequence[int], out_dim: int, extra_dim: int = 0,
        channels: Sequence[int] = (8, 16, 32), activation: str = "silu",
    ) -> None:
        super().__init__()
        self.image_shape, channels, hs, ws = _geometry(image_shape, channels)
        self.extra_dim = extra_dim
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, KERNEL, STRIDE, PADDING), activation_layer(activation),
                          EncoderCell(c_out, activation))
            for c_in, c_out in zip([self.image_shape[0], *channels[:-1]], channels, strict=True)
        )
        self.features = channels[-1] * hs[-1] * ws[-1]  # 32·4·4 = 512 for 28x28
        self.head = nn.Linear(self.features + extra_dim, out_dim)

    def forward(self, inputs: Tensor) -> Tensor:
        lead, h, extra = split_rows(inputs, self.image_shape, self.extra_dim, "ResConvEncoder")  # (N, C, H, W)
        for stage in self.stages:
            h = stage(h)  # (N, c_i, h_i, w_i)
        h = h.flatten(1)  # (N, 512) at 28x28
        if extra is not None:
            h = torch.cat([h, extra], dim=1)  # (N, 512 + extra)
        return self.head(h).reshape(*lead, -1)  # (..., out_dim)


class ResConvDecoder(nn.Module):
    """(..., in_dim) -> (..., P·C·H·W): ConvDecoder with a decoder cell at each inner resolution.

    Linear -> activation -> (N, c_L, h_L, w_L) -> ``DecoderCell``; then for each inner stage a
    transposed conv 3x3 stride 2 -> activation -> ``DecoderCell``; the last transposed conv maps
    to the P·C output channels at the image's size (no cell: its outputs are distribution
    parameters). The output is flattened channel-major, (P, C, H, W) -> P·C·H·W, as ConvDecoder's.

    Args:
        in_dim: latent dimension d plus the condition width.
        image_shape: (C, H, W) of one image.
        params_per_dim: P, likelihood parameters per pixel.
        channels: channels of the encoder's stages, which the decoder mirrors.
        activation: nonlinearity after the linear layer, each inner transposed conv and inside the cells.
    """

    def __init__(
        self, in_dim: int, image_shape: Sequence[int], params_per_dim: int = 1,
        channels: Sequence[int] = (8, 16, 32), activation: str = "silu",
    ) -> None:
        super().__init__()
        self.image_shape, channels, hs, ws = _geometry(image_shape, channels)
        self.params_per_dim = params_per_dim
        self.start = (channels[-1], hs[-1], ws[-1])  # (32, 4, 4) at 28x28
        self.linear = nn.Sequential(
            nn.Linear(in_dim, math.prod(self.start)), activation_layer(activation)
        )
        self.first_cell = DecoderCell(channels[-1], activation)
        outs = [*reversed(channels[:-1]), params_per_dim * self.image_shape[0]]  # 16, 8, P·C
        stages: list[nn.Module] = []
        c_in = channels[-1]
        for i, c_out in enumerate(outs):
            deconv = upsampling(c_in, c_out, hs, ws, len(channels) - 1 - i)  # 4 -> 7 -> 14 -> 28, as ConvDecoder
            if i < len(outs) - 1:
                stages.append(nn.Sequential(deconv, activation_layer(activation), DecoderCell(c_out, activation)))
            else:
                stages.append(deconv)
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    def forward(self, inputs: Tensor) -> Tensor:
        lead = inputs.shape[:-1]
        h = self.linear(inputs.reshape(-1, inputs.shape[-1])).reshape(-1, *self.start)  # (N, 32, 4, 4) at 28x28
        if not torch.is_grad_enabled():
            # Without autograd (evaluation, sampling) run in channels-last layout, as ConvDecoder does:
            # the same numbers to float rounding (a test checks), measured 2.0x faster on 2,000 decoded
            # z at 28x28, channels (16, 32, 64), one thread (0.46 s against 0.89 s), which is the bulk
            # of IWAE evaluation. Training keeps the default layout: a stacked sweep runs the decoder
            # under vmap, which cannot take channels-last tensors, and fit must give its numbers.
            h = h.contiguous(memory_format=torch.channels_last)
        h = self.first_cell(h)
        for stage in self.stages:
            h = stage(h)  # (N, c, h, w), up to (N, P·C, H, W)
        return h.reshape(*lead, -1)  # (..., P·C·H·W)
