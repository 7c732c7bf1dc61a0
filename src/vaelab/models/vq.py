"""Vector-quantised latents: the ``vq`` family (VQ-VAE, van den Oord et al. 2017).

The encoder gives N vectors z_e,n(x) ∈ R^d; each is replaced by its nearest codebook vector

    k_n(x) = argmin_k ‖z_e,n(x) − e_k‖²,    z_q,n(x) = e_{k_n(x)}       (eqs. 1-2),

and the decoder reads z_q(x) = [z_q,1 … z_q,N] (width N·d, the model's ``latent_dim``). One
codebook E = (e_1 … e_K) of K vectors serves every n. An MLP body has N groups (``--vq-groups``,
d = ``--latent-dim`` / N); a conv body (``--net conv``) has one code per cell of its code grid
(7×7 for 28×28 images: two stride-2 convolutions), each of width d = ``--latent-dim``.

As a latent-variable model (section 3.1): q(z|x) is a point mass on z_q(x) (one-hot over the
codes, entropy 0) and p(z) a distribution over the K^N codebook configurations, uniform
during training (``CodePrior``; a learned prior over the codes replaces it for sampling, see
``vaelab.models.code_prior``). Hence

    KL(q(z|x) ‖ p(z)) = −log p(z_q(x))    (= N log K under the uniform prior),

and the ELBO is the bound  log p(x) ≥ log p(x | z_q(x)) + log p(z_q(x))  the paper states.

Training (the ``vq`` objective, ``vaelab.objectives.vq_loss``), eq. 3 with the codebook term
replaced by exponential moving averages (appendix A.1):

    loss = −log p(x | z_q(x)) + β ‖z_e(x) − sg[z_q(x)]‖²,   β = ``commitment`` (0.25),

with the straight-through estimator: the decoder's gradient with respect to z_q is copied onto
z_e (``CodePoint.rsample``: value z_q exactly, gradient the identity onto z_e). The codebook
is not trained by the optimizer: after each training step's quantisation (``update_codebook``)

    N_k ← γ N_k + (1 − γ) n_k,   m_k ← γ m_k + (1 − γ) Σ_{i: k_i = k} z_e,i,   e_k = m_k / Ñ_k   (eqs. 6-8),

n_k the number of the batch's vectors assigned to code k, γ = ``decay`` (0.99) and Ñ_k the
counts with Laplace smoothing (Ñ_k = (N_k + ε)/(Σ_j N_j + Kε) · Σ_j N_j, ε = 1e-5, so that a code
nobody uses does not divide by 0). N, m and E are buffers, saved with the weights and stacked
per member by a sweep. A code is *dead* when its count N_k (an average number of vectors per
batch) falls below ``dead_below``; with ``restart`` it is moved onto one of the batch's encoder
vectors, chosen uniformly by a draw from the run's generator, and gets the count of a fresh code
(1); every code starts dead, so the first step places the unused codes on the data. The
update has no data-dependent branch (every step draws K candidates, ``torch.where``
keeps those of the dead codes), so the stacked sweep (vmap) and a resumed run make exactly the
draws a single uninterrupted run makes. Under torchrun the counts and sums are summed over the
ranks before the update, and rank 0's codebook (with its restarts) is broadcast to the others.

Finite scalar quantization (``quantizer = "fsq"``; Mentzer, Minnen, Agustsson & Tschannen 2024)
replaces the learned codebook by a fixed grid. Each of the d coordinates of z_e is bounded and
rounded to one of L_i values (``levels`` = (L_1 … L_d)):

    f(z)_i = h_i · tanh(z_i + s_i) − o_i,   h_i = (L_i − 1)(1 + 1e-3) / 2,  o_i = ½ if L_i is even
             else 0,  s_i = atanh(o_i / h_i)                                    (the bound),
    z_q,i = round(f(z)_i) / ⌊L_i / 2⌋,

so coordinate i takes the L_i values (j − ⌊L_i/2⌋) / ⌊L_i/2⌋, j = 0 … L_i − 1 (in [−1, 1]; an
even L_i has one more value below 0 than above). The codes are the product grid, K = Π L_i
vectors, stored as a fixed ``codebook`` (K, d), code k's coordinates the mixed-radix digits of k
(the last coordinate fastest). Rounding each coordinate is the nearest grid vector, so
``nearest`` finds the same code as the rounding, and everything downstream (the point-mass
q(z|x), −log p(z_q) as the KL, the prior over the codes, its second stage, the bound, the
figures) is the same as with the learned codebook. The straight-through gradient goes onto the
bounded f(z)/⌊L/2⌋ (its tanh carries the gradient to z_e); there is no commitment loss, no
moving average and no dead code to restart (the paper's point: nothing to collapse), so those
settings are refused with fsq.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, cast

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.distributions import Distribution, constraints, register_kl

from vaelab.config import ConfigError, FamilyOptions, ModelConfig
from vaelab.distributions import NoiseTape, gumbel_noise, register_rsample
from vaelab.errors import InputError
from vaelab.likelihoods import build_likelihood
from vaelab.models.base import VariationalModel
from vaelab.models.code_prior import GroupCodes, PixelCNNCodes
from vaelab.nets.conv import KERNEL, PADDING, STRIDE, conv_sizes, image_shape_for, upsampling
from vaelab.nets.mlp import activation_layer

# Laplace smoothing of the EMA counts (Sonnet's VectorQuantizerEMA uses the same ε).
LAPLACE_EPS = 1e-5
# The count a fresh (or restarted) code starts with: the EMA of one vector per batch.
FRESH_COUNT = 1.0
# The most codes an fsq grid may have (the learned prior has a logit per code).
MAX_FSQ_CODES = 2 ** 16
# Stride-2 convolutions of the conv body: 28 -> 14 -> 7, the paper's grid size for 28x28 images.
STRIDED = 2


class VQOptions(FamilyOptions):
    """The ``[model.vq]`` table: codebook size, groups, commitment weight, EMA decay, restarts, temperature."""

    codes: int = Field(64, ge=2, description="number K of codebook vectors")
    groups: int = Field(1, ge=1, description="number N of code vectors per point for --net mlp (each of width "
                        "latent_dim / N); --net conv has one per cell of its code grid, so leave it at 1")
    commitment: float = Field(0.25, ge=0, description="commitment weight β of ‖z_e − sg[e]‖² in the loss "
                              "(van den Oord et al. 2017, eq. 3)")
    decay: float = Field(0.99, gt=0, lt=1, description="decay γ of the codebook's exponential moving averages")
    dead_below: float = Field(0.01, ge=0, lt=FRESH_COUNT, description="a code whose moving-average count (vectors "
                              "per batch) falls below this is dead (the history's dead_codes)")
    restart: bool = Field(True, description="move each dead code onto an encoder output of the batch, drawn from "
                          "the run's generator")
    prior: Literal["learned", "uniform"] = Field("learned", description="p(z) over the codes: learned (an "
                                                  "autoregressive model over the groups for --net mlp, a small "
                                                  "PixelCNN over the code grid for --net conv; uniform until its "
                                                  "second stage trains it: --objective vq_prior) or uniform")
    prior_width: int = Field(32, ge=1, description="hidden width (mlp) or channels (conv) of the learned prior")
    prior_blocks: int = Field(2, ge=0, description="gated residual blocks of the learned PixelCNN prior (--net conv)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the learned prior (its logits "
                               "divided by it; below 1: more typical codes)")
    quantizer: Literal["ema", "fsq"] = Field("ema", description="how an encoder vector becomes a code: ema (the "
                                             "nearest of K learned codebook vectors, moved by moving averages) or fsq "
                                             "(finite scalar quantization: each coordinate bounded and rounded to one "
                                             "of --vq-levels values; a fixed grid of K = product of the levels codes, "
                                             "no commitment loss)")
    levels: list[int] | None = Field(None, description="fsq: the number of values L_i of each coordinate of a code "
                                     "vector, d = len(levels) coordinates, K = L_1 x ... x L_d codes, e.g. 8,5,5,5 "
                                     "(K = 1000) or 8,6,5 (K = 240); only with --vq-quantizer fsq")

    @model_validator(mode="after")
    def _quantizer_settings(self) -> VQOptions:
        given = self.model_fields_set
        if self.quantizer == "ema":
            if "levels" in given:
                raise ValueError("levels (--vq-levels) are the values per coordinate of the fsq quantizer, and the "
                                 "quantizer is ema (a learned codebook of --vq-codes vectors); give --vq-quantizer fsq "
                                 "or drop --vq-levels")
            return self
        if self.levels is None:
            raise ValueError("the fsq quantizer needs its levels: --vq-levels L_1,...,L_d, the number of values of "
                             "each of the d coordinates of a code vector (d = --latent-dim for --net conv, "
                             "--latent-dim / --vq-groups for mlp), e.g. 8,5,5,5 for K = 1000 codes")
        if any(level < 2 for level in self.levels):
            raise ValueError(f"every fsq level is a number of values, at least 2; got {self.levels}")
        codes = math.prod(self.levels)
        if codes > MAX_FSQ_CODES:
            raise ValueError(f"--vq-levels {','.join(map(str, self.levels))} make {codes:,} codes; at most "
                             f"{MAX_FSQ_CODES:,} (the prior over the codes has one logit per code): use fewer or "
                             "smaller levels")
        ema_only = [name for name in ("codes", "commitment", "decay", "dead_below", "restart") if name in given]
        if ema_only:
            raise ValueError(f"{', '.join('--vq-' + n.replace('_', '-') for n in ema_only)}: a setting of the learned "
                             "(ema) codebook, and the quantizer is fsq, whose codes are the fixed grid of --vq-levels "
                             f"(K = {codes:,}) with no commitment loss, moving average or restarts; drop it")
        return self


# -- the distributions ---------------------------------------------------------------------------


class CodeModel(Protocol):
    """A distribution over code index configurations k ∈ {0..K-1}^N: what ``CodePrior`` needs."""

    def log_prob_codes(self, index: Tensor) -> Tensor:
        """log p(k): index (..., N) integers -> (...)."""
        ...

    def sample_codes(self, shape: tuple[int, ...], generator: torch.Generator | NoiseTape | None,
                     temperature: float) -> Tensor:
        """Draws k ~ p (logits / temperature): shape + (N,) integers."""
        ...


class UniformCodes:
    """p(k) = Π_n 1/K: every configuration of N codes among K equally likely."""

    def __init__(self, groups: int, codes: int, like: Tensor) -> None:
        self.groups, self.codes, self.like = groups, codes, like

    def log_prob_codes(self, index: Tensor) -> Tensor:
        return torch.full(index.shape[:-1], -self.groups * math.log(self.codes), dtype=self.like.dtype,
                          device=self.like.device)

    def sample_codes(self, shape: tuple[int, ...], generator: torch.Generator | NoiseTape | None,
                     temperature: float) -> Tensor:
        # Gumbel-max on equal logits: uniform draws, from the generator (or a stacked step's tape)
        g = gumbel_noise((*shape, self.groups, self.codes), self.like, generator)
        return g.argmax(dim=-1)


def lookup(index: Tensor, codebook: Tensor) -> Tensor:
    """e_{k}: index (..., N) integers, codebook (K, d) -> (..., N·d).

    As a one-hot product rather than ``codebook[index]``: the same numbers exactly (one nonzero
    term per sum), and it has batching rules under vmap (a stacked sweep's step)."""
    k = codebook.shape[0]
    one_hot = (index.unsqueeze(-1) == torch.arange(k, device=index.device)).to(codebook.dtype)  # (..., N, K)
    z = one_hot @ codebook  # (..., N, d)
    return z.reshape(*z.shape[:-2], -1)


def nearest(z: Tensor, codebook: Tensor) -> Tensor:
    """k_n = argmin_k ‖z_n − e_k‖² (eq. 1): z (..., N, d), codebook (K, d) -> (..., N) integers.

    ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖² (one matrix product instead of a (…, N, K, d) difference);
    ‖z‖² does not change the argmin but keeps the numbers distances."""
    dist = z.square().sum(-1, keepdim=True) - 2 * z @ codebook.T + codebook.square().sum(-1)  # (..., N, K)
    return dist.argmin(dim=-1)


class CodePoint(Distribution):
    """q(z|x) of a VQ-VAE: a point mass on z_q(x), batch shape (B,), event (N·d,).

    ``rsample`` returns z_q exactly, with the straight-through gradient: z_q + (z_e − sg[z_e]),
    whose value is z_q (z_e − z_e is exactly 0) and whose gradient with respect to z_e is the
    identity (section 3.1 of the paper). ``log_prob(z)`` is the log-mass: 0 at z_q, −inf elsewhere.
    ``z_e`` (B, N, d) and ``index`` (B, N) are kept for the loss and the codebook update.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_enumerate_support = True  # one value: the evaluation reads its ``mode`` as the point's code

    def __init__(self, z_e: Tensor, index: Tensor, z_q: Tensor, codes: int) -> None:
        self.z_e, self.index, self.z_q, self.codes = z_e, index, z_q, codes  # (B, N, d), (B, N), (B, N·d)
        super().__init__(z_q.shape[:-1], z_q.shape[-1:], validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, 1)

    @property
    def mean(self) -> Tensor:
        return self.z_q

    @property
    def mode(self) -> Tensor:
        return self.z_q

    @property
    def variance(self) -> Tensor:
        return torch.zeros_like(self.z_q)

    def entropy(self) -> Tensor:
        return torch.zeros(self.batch_shape, dtype=self.z_q.dtype, device=self.z_q.device)

    def straight_through(self) -> Tensor:
        """z_q (B, N·d) in value, the identity onto z_e in gradient."""
        z_e = self.z_e.reshape(self.z_q.shape)
        return self.z_q.detach() + (z_e - z_e.detach())

    def rsample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        z = self.straight_through()
        return z.expand(*sample_shape, *z.shape)

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        return self.z_q.detach().expand(*sample_shape, *self.z_q.shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """0 where value == z_q (every coordinate), −inf elsewhere: (...)."""
        at = (value == self.z_q).all(dim=-1)
        return torch.where(at, 0.0, -math.inf).to(self.z_q.dtype)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        return self.z_q.unsqueeze(0)


class CodePrior(Distribution):
    """p(z) over the codebook: z = [e_{k_1} … e_{k_N}] with k ~ ``code_model`` (uniform by default).

    batch shape (), event (N·d,). ``log_prob(z)`` is log p(k) where every group of z is a
    codebook vector (k its index), −inf elsewhere; ``rsample`` draws k from the code model
    (with the generator; logits / ``temperature`` for a learned one) and looks the vectors up.
    The codebook is a buffer: draws carry no gradient. ``enumerate_support`` lists the K^N
    configurations (for the exact p(x) = Σ_z p(x|z) p(z) where that is small).
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_enumerate_support = True

    def __init__(self, codebook: Tensor, groups: int, code_model: CodeModel | None = None,
                 temperature: float = 1.0) -> None:
        self.codebook, self.groups = codebook, groups
        self.codes, self.dim = codebook.shape
        self.code_model: CodeModel = (UniformCodes(groups, self.codes, codebook) if code_model is None
                                      else code_model)
        self.temperature = temperature
        super().__init__(torch.Size(), torch.Size([groups * self.dim]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, 1)

    @property
    def support_size(self) -> int:
        """K^N, the number of code configurations."""
        return self.codes ** self.groups

    @property
    def is_uniform(self) -> bool:
        return isinstance(self.code_model, UniformCodes)

    def index_of(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The nearest code of every group, (..., N), and whether z is exactly on the codebook (...)."""
        groups = z.reshape(*z.shape[:-1], self.groups, self.dim)
        index = nearest(groups, self.codebook)
        exact = (lookup(index, self.codebook) == z).all(dim=-1)
        return index, exact

    def log_prob(self, value: Tensor) -> Tensor:
        index, exact = self.index_of(value)
        log_p = self.code_model.log_prob_codes(index)
        return torch.where(exact, log_p, torch.full_like(log_p, -math.inf))

    def log_prob_codes(self, index: Tensor) -> Tensor:
        """log p(k): index (..., N) -> (...)."""
        return self.code_model.log_prob_codes(index)

    def sample_codes(self, shape: Sequence[int], generator: torch.Generator | NoiseTape | None = None) -> Tensor:
        """k ~ p: shape + (N,) integers."""
        return self.code_model.sample_codes(tuple(shape), generator, self.temperature)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        return lookup(self.sample_codes(tuple(sample_shape), None), self.codebook)

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        return self.rsample(sample_shape)

    @property
    def mean(self) -> Tensor:
        if not self.is_uniform:
            raise NotImplementedError("the mean of a learned prior over codes is not computed")
        return self.codebook.mean(0).repeat(self.groups)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """Every configuration, (K^N, N·d), the first group's code varying slowest."""
        k, n = self.codes, self.groups
        grids = torch.meshgrid(*[torch.arange(k, device=self.codebook.device)] * n, indexing="ij")
        index = torch.stack([g.reshape(-1) for g in grids], dim=-1)  # (K^N, N)
        return lookup(index, self.codebook)


@register_rsample(CodePoint)
def _rsample_code_point(dist: CodePoint, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return dist.rsample(shape)  # no noise: q(z|x) is a point mass


@register_rsample(CodePrior)
def _rsample_code_prior(dist: CodePrior, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return lookup(dist.sample_codes(shape, generator), dist.codebook)


@register_kl(CodePoint, CodePrior)
def kl_code_point(q: CodePoint, p: CodePrior) -> Tensor:
    """KL(δ_{z_q} ‖ p) = −log p(z_q): q has one value and no entropy (N log K for the uniform p)."""
    return -p.log_prob(q.z_q)


# -- the conv body -------------------------------------------------------------------------------


class GridEncoder(nn.Module):
    """(..., C·H·W) -> (..., H'·W'·d): the code grid, each cell's d-vector contiguous.

    conv 3x3 stride 2 (×2: 28 -> 14 -> 7), then 3x3 stride-1 convs for further channels, then a 1x1
    conv to d channels: ``channels`` (c_1, c_2, ...) are the convolutions' widths.
    """

    def __init__(self, image_shape: Sequence[int], dim: int, channels: Sequence[int], activation: str) -> None:
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        self.image_shape = (c, h, w)
        strided = min(STRIDED, len(channels))
        self.grid = (conv_sizes(h, strided)[-1], conv_sizes(w, strided)[-1])
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([c, *channels[:-1]], channels, strict=True)):
            stride = STRIDE if i < strided else 1
            layers += [nn.Conv2d(c_in, c_out, KERNEL, stride, PADDING), activation_layer(activation)]
        layers.append(nn.Conv2d(channels[-1], dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        image = x.reshape(-1, *self.image_shape)  # (B, C, H, W)
        h = self.net(image)  # (B, d, H', W')
        return h.permute(0, 2, 3, 1).reshape(*lead, -1)  # (..., H'·W'·d), cell by cell


class GridDecoder(nn.Module):
    """(..., H'·W'·d) -> (..., P·C·H·W), the encoder mirrored: 1x1 conv, stride-1 convs, transposed
    stride-2 convs back to the image (flattened channel-major, like ``ConvDecoder``)."""

    def __init__(self, image_shape: Sequence[int], dim: int, params_per_dim: int, channels: Sequence[int],
                 activation: str) -> None:
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        strided = min(STRIDED, len(channels))
        hs, ws = conv_sizes(h, strided), conv_sizes(w, strided)
        self.grid, self.dim = (hs[-1], ws[-1]), dim
        layers: list[nn.Module] = [nn.Conv2d(dim, channels[-1], 1), activation_layer(activation)]
        for i in range(len(channels) - 1, strided - 1, -1):  # the stride-1 convs, mirrored
            layers += [nn.Conv2d(channels[i], channels[i - 1], KERNEL, 1, PADDING), activation_layer(activation)]
        outs = [*reversed(channels[:strided - 1]), params_per_dim * c]
        c_in = channels[strided - 1]
        for i, c_out in enumerate(outs):
            layers.append(upsampling(c_in, c_out, hs, ws, strided - 1 - i))
            if i < len(outs) - 1:
                layers.append(activation_layer(activation))
            c_in = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        grid = z.reshape(-1, *self.grid, self.dim).permute(0, 3, 1, 2)  # (B, d, H', W')
        return self.net(grid).reshape(*lead, -1)


# -- the family ----------------------------------------------------------------------------------


class VQVAE(VariationalModel):
    """A VQ-VAE with an EMA codebook (see the module docstring).

    encode: x (B, D) [+ c] -> q(z|x), a point mass on z_q(x) (``CodePoint``); prior: ``CodePrior``
    (uniform over the K^N configurations); decode: z (..., N·d) [+ c] -> p(x|z). Buffers:
    ``codebook`` (K, d), ``ema_count`` (K,), ``ema_sum`` (K, d).
    """

    options = VQOptions
    default_objective = "vq"
    # The first stage (encoder, decoder, codebook) and the second (the learned prior over the codes).
    objectives = ("vq", "vq_prior")
    codebook: Tensor
    ema_count: Tensor
    ema_sum: Tensor

    def __init__(
        self, config: ModelConfig, x_dim: int, cond_dim: int = 0, cond_embed: Sequence[int] = ()
    ) -> None:
        super().__init__()
        opts = config.family_options(VQOptions)
        self.opts = opts
        self.codes, self.commitment, self.decay = opts.codes, opts.commitment, opts.decay
        if config.net == "conv":
            if opts.groups != 1:
                raise ConfigError(f"model.vq.groups (--vq-groups) = {opts.groups}: with --net conv every cell of the "
                                  "code grid has its own code (7x7 = 49 for 28x28 images); drop --vq-groups, or use "
                                  "--net mlp")
            if cond_dim:
                raise ConfigError("the vq family's conv body takes no condition yet: train it unconditionally "
                                  "(drop the condition) or use --net mlp")
            self.dim = config.latent_dim
            self.config, self.x_dim, self.cond_dim = config, x_dim, cond_dim
            self.likelihood = build_likelihood(config.likelihood, config.recon_var, config.min_var)
            self.cond_net, self.cond_embed = None, ()
            shape = image_shape_for(x_dim)
            self.encoder = encoder = GridEncoder(shape, self.dim, config.channels, config.activation)
            self.decoder = GridDecoder(shape, self.dim, self.likelihood.params_per_dim, config.channels,
                                       config.activation)
            self.grid = encoder.grid
            self.groups = encoder.grid[0] * encoder.grid[1]
        else:
            if config.latent_dim % opts.groups:
                raise ConfigError(f"model.latent_dim (--latent-dim) = {config.latent_dim} is the width N·d of the vq "
                                  f"family's z (N = {opts.groups} code vectors of width d), and it is not a multiple "
                                  f"of N: give --latent-dim {opts.groups * max(1, config.latent_dim // opts.groups)} "
                                  "or another --vq-groups")
            self.groups = opts.groups
            self.dim = config.latent_dim // opts.groups
            self._build(config, x_dim, cond_dim, cond_embed, encoder_out=config.latent_dim)
        # The codebook: e_k ~ N(0, I) at first (weights' initialisation: build_model seeds it).
        # With restarts every code starts dead (count 0), so the first training step moves the
        # codes that no vector chose onto encoder outputs of the batch: the codebook starts on the
        # data, not on N(0, I) points the encoder may never reach. Without restarts each starts
        # with the count of a fresh code, so e = m / N holds from the first step.
        self.fsq = opts.quantizer == "fsq"
        if self.fsq:  # a fixed grid of Π L_i codes, no commitment loss (module docstring)
            assert opts.levels is not None  # VQOptions requires them with fsq
            if self.dim != len(opts.levels):
                width = ("--latent-dim" if config.net == "conv" else
                         f"--latent-dim / --vq-groups = {config.latent_dim} / {self.groups}")
                fix = (f"--latent-dim {len(opts.levels)}" if config.net == "conv" else
                       f"--latent-dim {self.groups * len(opts.levels)} (N = {self.groups} groups of d = "
                       f"{len(opts.levels)})")
                raise ConfigError(f"--vq-levels {','.join(map(str, opts.levels))} quantize code vectors of d = "
                                  f"{len(opts.levels)} coordinates, one level count each, but the code vectors have "
                                  f"d = {width} = {self.dim} coordinates: give {fix}, or one level per coordinate")
            self.codes, self.commitment = math.prod(opts.levels), 0.0
            self.levels = list(opts.levels)
            self.register_buffer("codebook", fsq_grid(self.levels))
        else:
            codebook = torch.randn(self.codes, self.dim)
            count = 0.0 if opts.restart else FRESH_COUNT
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.full((self.codes,), count))
            self.register_buffer("ema_sum", codebook * count)
        self.code_prior: nn.Module | None = None
        # With a learned prior each objective trains part of the parameters (vq: encoder and decoder;
        # vq_prior: the prior): under torchrun DDP must not wait for the others' gradients
        # (vaelab.train.distributed reads this).
        self.trains_in_parts = opts.prior == "learned"
        given = opts.model_fields_set
        if opts.prior == "uniform":
            unused = [name for name in ("prior_width", "prior_blocks", "temperature") if name in given]
            if unused:
                raise ConfigError(f"{', '.join('--vq-' + n.replace('_', '-') for n in unused)}: a setting of the "
                                  "learned prior over the codes, and --vq-prior is uniform; drop it or use --vq-prior "
                                  "learned")
        elif config.net == "conv":
            self.code_prior = PixelCNNCodes(self.grid, self.codes, opts.prior_width, opts.prior_blocks)
        else:
            if "prior_blocks" in given:
                raise ConfigError("--vq-prior-blocks sets the PixelCNN prior of --net conv; the mlp body's prior is "
                                  "autoregressive over its groups (--vq-prior-width sets its width): drop it")
            self.code_prior = GroupCodes(self.groups, self.codes, opts.prior_width, config.activation)

    @property
    def latent_dim(self) -> int:
        """The width of z: N code vectors of width d."""
        return self.groups * self.dim

    @property
    def prior_is_standard_normal(self) -> bool:
        return False

    def encode_vectors(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """z_e(x): (B, D) -> (B, N, d), the encoder's vectors before quantisation (fsq: bounded,
        f(z) / ⌊L/2⌋, so that rounding to the grid is the nearest code)."""
        self._check_width(x, self.x_dim, "x", "x_dim")
        h = self.encoder(self._with_condition(x, c))  # (B, N·d)
        h = h.reshape(*h.shape[:-1], self.groups, self.dim)
        return fsq_bound(h, self.levels) if self.fsq else h  # fsq: bounded, on the grid's scale

    def codes_of(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """k(x): (B, D) -> (B, N) code indices (the grid cells row by row for a conv body)."""
        return nearest(self.encode_vectors(x, c), self.codebook)

    def encode(self, x: Tensor, c: Tensor | None = None) -> CodePoint:
        """q(z|x, c) = δ(z − z_q(x)): batch shape (B,), event (N·d,)."""
        z_e = self.encode_vectors(x, c)
        index = nearest(z_e.detach(), self.codebook)  # (B, N): the codebook as it stands (before this step's update)
        return CodePoint(z_e, index, lookup(index, self.codebook), self.codes)

    def decode_codes(self, index: Tensor, c: Tensor | None = None) -> Distribution:
        """p(x | z = e_k): index (..., N) integers -> a distribution with batch shape (...)."""
        return self.decode(lookup(index, self.codebook), c)

    def prior(self, c: Tensor | None = None) -> CodePrior:
        """p(z): the uniform distribution over the K^N codebook configurations, or the learned
        code prior where one is attached; batch shape (), event (N·d,), the same for every c."""
        code_model = cast(CodeModel, self.code_prior) if self.code_prior is not None else None
        return CodePrior(self.codebook, self.groups, code_model, self.opts.temperature)

    def set_temperature(self, temperature: float) -> None:
        """Draw from the learned prior at ``temperature`` from now on (its logits divided by it; the
        run's ``model.vq.temperature`` until then). Scores (``log_prob``) never use it."""
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not \
                math.isfinite(temperature) or temperature <= 0:
            raise InputError(f"the sampling temperature must be a positive number, got {temperature!r} (1 samples the "
                             "prior as trained; below 1 more typical codes, above 1 more varied ones)")
        self.opts = self.opts.model_copy(update={"temperature": float(temperature)})

    def uniform_prior(self) -> CodePrior:
        """p(z) uniform over the K^N configurations (the first stage's prior), whatever ``prior`` is."""
        return CodePrior(self.codebook, self.groups)

    @torch.no_grad()
    def usage(self, index: Tensor, dead: Tensor | None = None) -> dict[str, Tensor]:
        """Codebook use: ``perplexity`` exp(H(p̄)) of the batch's code frequencies p̄ (K when every
        code is used equally, 1 when one code takes all) and (not for fsq) ``dead_codes``, the codes
        whose moving-average count is below ``dead_below`` (``dead`` (K,): those found so by this
        step's update, before it restarted them). index: (B, N)."""
        counts = (index.reshape(-1, 1) == torch.arange(self.codes, device=index.device)).to(self.codebook.dtype)
        p = counts.sum(0) / counts.shape[0]  # (K,)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()  # 0 · log 0 = 0
        if self.fsq:  # a fixed grid: no moving counts, no code is ever dead
            return {"perplexity": entropy.exp()}
        dead = self.ema_count < self.opts.dead_below if dead is None else dead
        return {"perplexity": entropy.exp(), "dead_codes": dead.sum().to(p.dtype)}

    @torch.no_grad()
    def update_codebook(self, q_z: CodePoint, generator: torch.Generator | NoiseTape | None) -> dict[str, Tensor]:
        """One EMA step of the codebook (eqs. 6-8 of the paper's appendix A.1, module docstring)
        from the batch's encoder vectors q_z.z_e (B, N, d) and their codes q_z.index (B, N), then
        the restarts of dead codes; returns the batch's codebook use (``usage``), ``dead_codes``
        counting the codes this step found dead (and restarted, with ``restart``).

        With ``restart`` every step draws K uniform batch positions (as standard Normals through Φ,
        from ``generator``: a stacked or compiled step's tape works too), used only by the dead
        codes; without it nothing is drawn. fsq: its grid never moves; only the use is returned."""
        if self.fsq:
            return self.usage(q_z.index)
        z = q_z.z_e.detach().reshape(-1, self.dim)  # (M, d), M = B·N
        one_hot = (q_z.index.reshape(-1, 1) == torch.arange(self.codes, device=z.device)).to(z.dtype)  # (M, K)
        n = one_hot.sum(0)  # (K,) n_k
        s = one_hot.T @ z  # (K, d) Σ_{i: k_i = k} z_e,i
        world = _world()
        if world > 1:  # the global batch's statistics (each rank holds a share of it)
            torch.distributed.all_reduce(n)
            torch.distributed.all_reduce(s)
        gamma = self.decay
        self.ema_count.mul_(gamma).add_(n, alpha=1 - gamma)  # eq. 6
        self.ema_sum.mul_(gamma).add_(s, alpha=1 - gamma)  # eq. 7
        total = self.ema_count.sum()
        smoothed = (self.ema_count + LAPLACE_EPS) / (total + self.codes * LAPLACE_EPS) * total  # Laplace
        codebook = self.ema_sum / smoothed.unsqueeze(-1)  # eq. 8
        dead = self.ema_count < self.opts.dead_below  # (K,)
        if self.opts.restart:
            eps = _normal((self.codes,), z, generator)  # (K,) drawn every step, used by the dead codes only
            u = 0.5 * torch.special.erfc(-eps * math.sqrt(0.5))  # Φ(ε) ~ U(0, 1)
            position = (u * z.shape[0]).long().clamp(0, z.shape[0] - 1)  # (K,) uniform in 0..M-1
            candidate = z.index_select(0, position)  # (K, d)
            codebook = torch.where(dead.unsqueeze(-1), candidate, codebook)
            self.ema_count.copy_(torch.where(dead, torch.full_like(self.ema_count, FRESH_COUNT), self.ema_count))
            self.ema_sum.copy_(torch.where(dead.unsqueeze(-1), candidate * FRESH_COUNT, self.ema_sum))
        self.codebook.copy_(codebook)
        if world > 1:  # rank 0's restarts (from its share of the batch) on every rank
            for buffer in (self.codebook, self.ema_count, self.ema_sum):
                torch.distributed.broadcast(buffer, 0)
        return self.usage(q_z.index, dead)

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator | None = None,
        stochastic: bool = False,
    ) -> Tensor:
        """Decode z_q(x): (B, D) -> (B, D), the decoder mean (``stochastic``: x ~ p(x | z_q(x)))."""
        return super().reconstruct(x, c, generator=generator, stochastic=stochastic)


def fsq_grid(levels: Sequence[int]) -> Tensor:
    """The fsq codes: (Π L_i, d), code k's coordinate i the value (j_i − ⌊L_i/2⌋) / ⌊L_i/2⌋ of k's
    mixed-radix digit j_i (the last coordinate's digit fastest)."""
    axes = [(torch.arange(level) - level // 2) / (level // 2) for level in levels]
    return torch.cartesian_prod(*axes).reshape(-1, len(levels)).float()


def fsq_bound(z: Tensor, levels: Sequence[int]) -> Tensor:
    """f(z) / ⌊L/2⌋ of finite scalar quantization (Mentzer et al. 2024; module docstring): z (..., d)
    -> (..., d), coordinate i inside the span of its L_i grid values, so that rounding f(z) picks each
    of them for some z. The 1e-3 widening lets the extreme values be reached by a finite z."""
    level = torch.tensor(levels, dtype=z.dtype, device=z.device)
    half = (level - 1) * (1 + 1e-3) / 2
    offset = (1 - torch.remainder(level, 2)) * 0.5  # ½ for an even L: the grid is shifted by half a step
    shift = torch.atanh(offset / half)
    return (torch.tanh(z + shift) * half - offset) / torch.div(level, 2, rounding_mode="floor")


def bound_parts(model: VQVAE, metrics: Mapping[str, Any], dim: int | None = None) -> dict[str, float]:
    """The VQ-VAE's bound beside the uniform prior's, from evaluation ``metrics`` (nats per point).

    With a deterministic encoder, −log p(x) ≤ −log p(x | z_q(x)) − log p(z_q(x)): ``recon`` plus
    ``kl`` (= −log p_prior(z_q)) is −ELBO, the bound under the model's prior. Beside it, the
    uniform prior's: ``uniform_kl`` = N log K and ``uniform_bound`` = recon + N log K, and
    ``prior_gain`` = uniform_kl − kl, what the learned prior saves (0 for the uniform prior).
    With ``dim`` (image data: D pixels) each also in bits per dimension (nats / (D ln 2)):
    ``recon_bpd``, ``kl_bpd``, ``uniform_kl_bpd``, ``uniform_bound_bpd`` (``elbo_bpd`` is the bound's).
    """
    uniform_kl = model.groups * math.log(model.codes)
    out = {"uniform_kl": uniform_kl, "uniform_bound": float(metrics["recon"]) + uniform_kl,
           "prior_gain": uniform_kl - float(metrics["kl"])}
    if dim is not None:
        scale = 1.0 / (dim * math.log(2.0))
        out.update(recon_bpd=float(metrics["recon"]) * scale, kl_bpd=float(metrics["kl"]) * scale,
                   uniform_kl_bpd=uniform_kl * scale, uniform_bound_bpd=out["uniform_bound"] * scale)
    return out


def _normal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | NoiseTape | None) -> Tensor:
    """ε ~ N(0, I) of ``shape`` from a generator or a training step's tape."""
    if isinstance(generator, NoiseTape):
        return generator.normal(shape, like)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _world() -> int:
    """The number of processes training together (1 outside torchrun)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


__all__ = ["CodePoint", "CodePrior", "bound_parts", "GridDecoder", "GridEncoder", "UniformCodes", "VQOptions", "VQVAE",
           "fsq_bound", "fsq_grid", "kl_code_point", "lookup", "nearest"]
