"""Learned priors over a VQ-VAE's codes: p(k) for k ∈ {0..K-1}^N, trained as a second stage.

The VQ-VAE (``vaelab.models.vq``) trains with a uniform p(k); to sample, van den Oord et al.
(2017, section 3.2) fit an autoregressive prior to the codes of the training set afterwards.
Two, both exact distributions (their masses sum to 1 over all K^N configurations: tested by
enumeration), with the chain rule p(k) = Π_n p(k_n | k_<n):

- ``GroupCodes`` for an MLP body's N groups: p(k_1) a learned categorical, and for n > 1
  p(k_n | k_<n) = softmax(MLP_n(one-hot(k_<n))). With one group it is a categorical.
- ``PixelCNNCodes`` for a conv body's H'×W' grid (7×7 for 28×28 images), in raster order: a
  small PixelCNN (van den Oord et al. 2016): a learned embedding of each code, a 5×5 masked
  convolution that sees only the cells before the current one (mask "A"), gated residual
  blocks of 3×3 masked convolutions (mask "B": the cell itself too, which after an "A" layer
  holds only earlier cells), tanh(a) ⊙ σ(b) gates as in the gated PixelCNN, then 1×1 to K
  logits per cell. It is the single-stack form: its receptive field has the blind spot of the
  first PixelCNN (cells up and to the right beyond the kernel), which the gated PixelCNN's
  vertical stack removes; at 7×7 with three blocks it still sees most of the grid.

Both start exactly uniform (their output layers are zero): before the second stage the model's
bound is the uniform-prior one, and the first stage's KL term is N log K. Draws take their noise
from the caller's generator (Gumbel-max on logits / temperature, ``gumbel_noise``); sampling
is sequential, N (or H'·W') passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.distributions import NoiseTape, gumbel_noise
from vaelab.nets.mlp import activation_layer


def _one_hot(index: Tensor, k: int, like: Tensor) -> Tensor:
    """(..., n) integers -> (..., n, K) of 0.0 / 1.0 (a comparison: vmap has batching rules for it)."""
    return (index.unsqueeze(-1) == torch.arange(k, device=index.device)).to(like.dtype)


def _draw(logits: Tensor, temperature: float, generator: torch.Generator | NoiseTape | None) -> Tensor:
    """k ~ softmax(logits / T) by the Gumbel-max trick: (..., K) -> (...) integers."""
    return (logits / temperature + gumbel_noise(tuple(logits.shape), logits, generator)).argmax(dim=-1)


class GroupCodes(nn.Module):
    """p(k_1 … k_N) = p(k_1) Π_{n>1} p(k_n | k_<n) over N groups of K codes (see the module docstring)."""

    def __init__(self, groups: int, codes: int, hidden: int = 64, activation: str = "relu") -> None:
        super().__init__()
        self.groups, self.codes = groups, codes
        self.first = nn.Parameter(torch.zeros(codes))  # logits of p(k_1): uniform at first
        self.conditionals = nn.ModuleList()
        for n in range(1, groups):
            out = nn.Linear(hidden, codes)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.conditionals.append(nn.Sequential(nn.Linear(n * codes, hidden), activation_layer(activation), out))

    def logits(self, index: Tensor) -> Tensor:
        """The logits of p(k_n | k_<n) for every n at once (teacher forcing): (..., N) -> (..., N, K)."""
        lead = index.shape[:-1]
        parts = [self.first.expand(*lead, self.codes)]
        if self.groups > 1:
            one_hot = _one_hot(index, self.codes, self.first).reshape(*lead, -1)  # (..., N·K)
            parts += [net(one_hot[..., :n * self.codes]) for n, net in enumerate(self.conditionals, start=1)]
        return torch.stack(parts, dim=-2)

    def log_prob_codes(self, index: Tensor) -> Tensor:
        """log p(k) = Σ_n log p(k_n | k_<n): (..., N) integers -> (...)."""
        log_p = torch.log_softmax(self.logits(index), dim=-1)  # (..., N, K)
        return log_p.gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def sample_codes(self, shape: tuple[int, ...], generator: torch.Generator | NoiseTape | None,
                     temperature: float) -> Tensor:
        """k ~ p, ancestrally, group after group: shape + (N,) integers."""
        index = torch.zeros(*shape, self.groups, dtype=torch.long, device=self.first.device)
        for n in range(self.groups):
            logits = self.logits(index)[..., n, :]  # (..., K): depends on k_<n only
            index[..., n] = _draw(logits, temperature, generator)
        return index


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only the cells before the centre in raster order (mask "A"), or
    those and the centre (mask "B") (van den Oord et al. 2016, PixelCNN, figure 1)."""

    mask: Tensor

    def __init__(self, c_in: int, c_out: int, kernel: int, kind: str) -> None:
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        mask = torch.ones(kernel, kernel)
        centre = kernel // 2
        mask[centre, centre + (kind == "B"):] = 0  # the centre row: from the centre (A) or after it (B)
        mask[centre + 1:] = 0  # every row below
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedBlock(nn.Module):
    """h + 1x1(tanh(a) ⊙ σ(b)), [a, b] = masked 3x3 conv B of h (the gated PixelCNN's unit)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = MaskedConv2d(channels, 2 * channels, 3, "B")
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, h: Tensor) -> Tensor:
        a, b = self.conv(h).chunk(2, dim=1)
        return h + self.out(torch.tanh(a) * torch.sigmoid(b))


class PixelCNNCodes(nn.Module):
    """p(k) over an H'×W' grid of K codes in raster order (see the module docstring)."""

    def __init__(self, grid: Sequence[int], codes: int, channels: int = 64, blocks: int = 3) -> None:
        super().__init__()
        self.grid, self.codes = (int(grid[0]), int(grid[1])), codes
        self.embed = nn.Parameter(torch.randn(codes, channels) * channels ** -0.5)  # one learned vector per code
        self.first = MaskedConv2d(channels, channels, 5, "A")
        self.blocks = nn.Sequential(*[GatedBlock(channels) for _ in range(blocks)])
        self.head = nn.Conv2d(channels, codes, 1)
        nn.init.zeros_(self.head.weight)  # uniform at first
        nn.init.zeros_(cast(Tensor, self.head.bias))

    @property
    def groups(self) -> int:
        return self.grid[0] * self.grid[1]

    def logits(self, index: Tensor, rows: int | None = None) -> Tensor:
        """The logits of p(k_cell | the cells before it), every cell at once: (..., H'·W') -> (..., H'·W', K).

        ``rows``: only the first ``rows`` rows of the grid, (..., rows·W', K). The whole grid's first
        rows (to float rounding: a smaller input may be summed in another order): every masked
        kernel weighs the rows below its centre by 0, so the rows after them change nothing
        (sampling row r needs rows 0..r alone, which makes sampling ~2x cheaper)."""
        lead = index.shape[:-1]
        h, w = self.grid
        h = h if rows is None else rows
        grid = index.reshape(-1, self.grid[0], w)[:, :h]  # (B, h, W')
        e = _one_hot(grid, self.codes, self.embed) @ self.embed  # (B, h, W', C)
        out = self.head(torch.relu(self.blocks(self.first(e.permute(0, 3, 1, 2)))))  # (B, K, h, W')
        return out.permute(0, 2, 3, 1).reshape(*lead, h * w, self.codes)

    def log_prob_codes(self, index: Tensor) -> Tensor:
        """log p(k) = Σ_cells log p(k_cell | earlier cells): (..., H'·W') integers -> (...)."""
        log_p = torch.log_softmax(self.logits(index), dim=-1)
        return log_p.gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def sample_codes(self, shape: tuple[int, ...], generator: torch.Generator | NoiseTape | None,
                     temperature: float) -> Tensor:
        """k ~ p, cell after cell in raster order: shape + (H'·W',) integers."""
        index = torch.zeros(*shape, self.groups, dtype=torch.long, device=self.embed.device)
        w = self.grid[1]
        for cell in range(self.groups):
            logits = self.logits(index, rows=cell // w + 1)[..., cell, :]  # the rows up to the cell's
            index[..., cell] = _draw(logits, temperature, generator)
        return index


__all__ = ["GatedBlock", "GroupCodes", "MaskedConv2d", "PixelCNNCodes"]
