"""What every figure shares: the plot context, the figure registry entry, and small helpers
for axes, colours and view limits.

Figures are built with ``matplotlib.figure.Figure`` directly (never ``pyplot``), so no global
figure state leaks between calls and nothing needs closing. ``Figure.savefig`` renders through
a canvas of its own for the file format (Agg for PNG), so the library never selects or switches
the process-wide backend: a notebook keeps its inline ``plt.show()``.

Conventions used by every figure:

- Latent dimensions are 0-based in the Python API (``dims=(0, 1)``) and labelled z₁, z₂ …
  on the axes (1-based, like the equations). The command line takes the 1-based numbers.
- Continuous colours use ``viridis`` (its lightness rises monotonically, so it still reads
  in grey); labels use a qualitative palette *and* a different marker per label.
- Panels that show the same space share their limits and use an equal aspect ratio.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor
from torch.distributions import Distribution

from vaelab.analysis import _device
from vaelab.config import check_seed_option
from vaelab.data import registry as data_registry
from vaelab.data.dataset import Dataset
from vaelab.errors import InputError
from vaelab.models import LatentModel, VariationalModel, has_normal_posterior, has_standard_prior

if TYPE_CHECKING:
    from vaelab.checkpoint import Run
    from vaelab.conditions import Condition
    from vaelab.config import RunConfig
    from vaelab.history import History
    from vaelab.models import LatentModel

log = logging.getLogger(__name__)

CMAP = "viridis"  # continuous values (data coordinate, z, density): monotonic lightness
DENSITY_CMAP = "magma"
# Every marker must leave pixels at the smallest scatter size (point_size: area 2): Agg draws "P"
# (filled plus) as nothing there and "*" as a single pixel, so neither is used.
LABEL_MARKERS = ("o", "s", "^", "D", "v", "p", "X", "h", "<", ">")
PANEL_SIZE = (4.3, 4.0)  # inches per panel: three panels read well on a laptop screen
DPI = 110
SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def sub(i: int) -> str:
    """A 1-based index as Unicode subscript digits: sub(12) -> '₁₂'."""
    return str(i).translate(SUBSCRIPTS)


def z_label(i: int) -> str:
    """Axis label of 0-based latent dimension i: z₁, z₂, …"""
    return f"z{sub(i + 1)}"


def x_label(i: int, x_dim: int, columns: Sequence[str] | None = None) -> str:
    """Axis label of 0-based data coordinate i: its column name where the data has them (a CSV
    header), else x with a subscript; says so when only 2 of D coordinates are shown."""
    base = columns[i] if columns is not None else f"x{sub(i + 1)}"
    return base if x_dim <= 2 else f"{base} (coordinate {i + 1} of {x_dim})"


class NotebookFigure(Figure):
    """A ``matplotlib.figure.Figure`` that shows itself as an image in IPython / Jupyter.

    IPython renders a plain Figure only when pyplot's inline backend has registered its
    formatter (``%matplotlib inline``, or importing pyplot in the kernel); vaelab never touches
    pyplot or the backend, so a fresh kernel would print ``<Figure size … with 3 Axes>``. This
    subclass carries IPython's rich-display hooks itself: the PNG that ``savefig`` writes
    (through a canvas of its own; no global state). Everything else is a plain Figure.
    """

    def _repr_png_(self) -> bytes:
        from vaelab.html import figure_png

        return figure_png(self)


def new_figure(
    ncols: int, nrows: int = 1, *, size: tuple[float, float] = PANEL_SIZE, title: str | None = None
) -> tuple[NotebookFigure, list[Axes]]:
    """A constrained-layout Figure with ``nrows × ncols`` panels; returns (fig, flat list of axes)."""
    fig = NotebookFigure(figsize=(size[0] * ncols, size[1] * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if title:
        # Wrap to the figure's width (about 8 characters per inch at this font size), so a long
        # title over a single narrow panel is not cut off at the figure's edges.
        fig.suptitle(textwrap.fill(title, width=max(20, int(8 * size[0] * ncols))), fontsize="large")
    return fig, list(axes.ravel())


def finite(a: np.ndarray) -> np.ndarray:
    """The finite entries of a 1-D array (histograms refuse NaN / inf)."""
    a = np.asarray(a, dtype=float).ravel()
    return a[np.isfinite(a)]


def view_limits(
    points: np.ndarray, *, margin: float = 0.08, square: bool = True
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits of 2-D points (n, 2) that show all of them, unless a few are far away.

    The full range is used when it is at most 1.5 times the 0.5–99.5 % range; otherwise
    the percentile range, so one wild point cannot shrink everything else. With ``square``
    both axes get the same span, so an equal aspect ratio fills the panel.
    """
    pts = np.asarray(points, dtype=float)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo = np.percentile(pts, 0.5, axis=0)
    hi = np.percentile(pts, 99.5, axis=0)
    full_lo, full_hi = pts.min(axis=0), pts.max(axis=0)
    use_full = (full_hi - full_lo) <= 1.5 * np.maximum(hi - lo, 1e-12)
    lo = np.where(use_full, full_lo, lo)
    hi = np.where(use_full, full_hi, hi)
    span = np.maximum(hi - lo, 1e-6)
    if square:
        span = np.full(2, span.max())
    mid = (lo + hi) / 2
    half = span * (0.5 + margin)
    return (mid[0] - half[0], mid[0] + half[0]), (mid[1] - half[1], mid[1] + half[1])


def including_prior(
    lims: tuple[tuple[float, float], tuple[float, float]], radius: float = 2.2,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square view limits that hold ``lims`` and the disc of ``radius`` around 0 (the prior's 2σ,
    with a margin): a collapsed code, whose means sit in a tiny region, then looks like the dot
    it is instead of a structure blown up to fill the panel."""
    lo = np.minimum([lims[0][0], lims[1][0]], -radius)
    hi = np.maximum([lims[0][1], lims[1][1]], radius)
    mid, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    return (mid[0] - half, mid[0] + half), (mid[1] - half, mid[1] + half)


def hist_range(values: np.ndarray, *, include: tuple[float, float] | None = None) -> tuple[float, float]:
    """The range a 1-D histogram shows: the 0.5-99.5 % range of the finite values (the full range
    when it is at most 1.5 times wider), widened to hold ``include`` (e.g. the prior's ±2σ)."""
    v = finite(values)
    if len(v) == 0:
        lo, hi = -1.0, 1.0
    else:
        lo, hi = (float(t) for t in np.percentile(v, [0.5, 99.5]))
        if v.max() - v.min() <= 1.5 * max(hi - lo, 1e-12):
            lo, hi = float(v.min()), float(v.max())
    if include is not None:
        lo, hi = min(lo, include[0]), max(hi, include[1])
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def in_range(values: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, int]:
    """The finite values inside [lo, hi], and how many were dropped (outside or not finite):
    a histogram drops them instead of piling them into its edge bins."""
    v = np.asarray(values, dtype=float).ravel()
    keep = np.isfinite(v) & (v >= lo) & (v <= hi)
    return v[keep], int((~keep).sum())


def dropped_note(n: int, total: int) -> str:
    """"" or a title line saying how many points a histogram left out."""
    return "" if n == 0 else f"\n({n} of {total} points outside the range, not drawn)"


def outside(points: np.ndarray, lims: tuple[tuple[float, float], tuple[float, float]]) -> int:
    """How many of the 2-D points (n, 2) fall outside the limits (or are not finite)."""
    pts = np.asarray(points, dtype=float)
    (x0, x1), (y0, y1) = lims
    inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
    return int((~inside).sum())


def set_view(ax: Axes, lims: tuple[tuple[float, float], tuple[float, float]], *, equal: bool = True) -> None:
    ax.set_xlim(*lims[0])
    ax.set_ylim(*lims[1])
    if equal:
        ax.set_aspect("equal", adjustable="box")


def point_size(n: int) -> float:
    """Marker area that keeps a scatter of n points readable (big for few, small for many)."""
    return float(np.clip(3000.0 / max(n, 1), 2.0, 30.0))


# Ten distinct label colours: tab10 in full. Its grey (#7f7f7f, label 7) is darker than the
# light greys (0.7-0.85) that background points use, so a label never looks like the background.
LABEL_COLOURS = 10


def label_colour(k: int) -> Any:
    """Colour of label k: tab10's k-th colour (10 labels, 10 colours; it repeats past 10, where
    the marker still tells labels apart)."""
    palette = matplotlib.colormaps["tab10"]
    return palette(k % LABEL_COLOURS)


def scatter_labels(
    ax: Axes,
    xy: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str] | None,
    *,
    s: float | None = None,
    legend: bool = True,
) -> None:
    """Scatter points (n, 2) with one colour *and* marker per label, plus a legend."""
    s = point_size(len(xy)) if s is None else s
    for k in np.unique(labels):
        m = labels == k
        name = names[k] if names is not None and k < len(names) else f"label {k}"
        ax.scatter(
            xy[m, 0],
            xy[m, 1],
            s=s,
            color=label_colour(int(k)),
            marker=LABEL_MARKERS[int(k) % len(LABEL_MARKERS)],
            label=name,
            alpha=0.8,
            linewidths=0,
        )
    if legend:
        add_legend(ax, len(np.unique(labels)))


def add_legend(ax: Axes, n_entries: int, *, below: bool = False) -> None:
    """A legend beside the panel (right), so it never hides data; two columns past 10 entries.
    ``below``: under the panel's x label instead, in rows of up to 5 (where a colour bar takes
    the right side, a legend there pushes the bar away and leaves an empty band).

    Scatter handles get one common marker size, however big or small the plotted markers are.
    """
    where = (dict(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=min(n_entries, 5)) if below
             else dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=2 if n_entries > 10 else 1))
    leg = ax.legend(fontsize="small", borderaxespad=0.0, framealpha=0.85, **where)
    for handle in leg.legend_handles:
        if handle is not None and hasattr(handle, "set_sizes"):
            handle.set_sizes([36.0])


def scatter_values(
    ax: Axes,
    xy: np.ndarray,
    values: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    s: float | None = None,
    cmap: str = CMAP,
) -> Any:
    """Scatter points (n, 2) coloured by a continuous value; returns the mappable for a colorbar."""
    s = point_size(len(xy)) if s is None else s
    return ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap=cmap, vmin=vmin, vmax=vmax, s=s, linewidths=0)


def text_panel(ax: Axes, message: str) -> None:
    """Replace a panel's content by a centred message (used for 'nothing to show')."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@dataclass
class PlotContext:
    """Everything a registered figure may need, loaded once and shared by all figures.

    Attributes:
        model: the trained model (eval mode), on any device.
        data: the points the figures show: (a subset of) the training split, on the CPU.
        config / history / metrics / failure: the run's records (None / empty when absent).
        dims: the two latent dimensions (0-based) that 2-D latent panels show.
        points: (m, D) data points whose q(z|x) the posterior-contour figure draws; None picks
            three well-separated training points.
        seed: seed of every random draw in the figures (prior samples, ε, q(z|x) samples).
        density_grid / density_k: resolution and importance samples of the p(x) image.
        latent_grid: points per side of the decoded latent grid.
        condition: a conditional run's condition spec (label list / value range), else None.
    """

    model: LatentModel
    data: Dataset
    config: RunConfig | None = None
    history: History | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] | None = None
    dims: tuple[int, int] = (0, 1)
    points: Tensor | None = None
    seed: int = 0
    density_grid: int = 80
    density_k: int = 100
    latent_grid: int = 15
    condition: Condition | None = None
    # The data coordinates (0-based) the pair plot draws (None: all of them, for D ≤ 5).
    data_dims: tuple[int, ...] | None = None
    # The view of the latent-space figure when several runs are compared on one scale (None: its own).
    latent_lims: tuple[tuple[float, float], tuple[float, float]] | None = None
    # The top of the density figure's colour scale when several runs share one (None: its own).
    density_vmax: float | None = None
    # What several figures compute from the same model and data, computed once per context
    # (a report draws every figure from one context): see posterior() and codes().
    _shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_seed_option(self.seed, "--seed (of the figures' random draws)")
        d = self.model.latent_dim
        i, j = self.dims
        if d >= 2 and not (0 <= i < d and 0 <= j < d and i != j):
            raise InputError(
                f"latent dimensions {i + 1} and {j + 1} cannot be shown: the model has d = {d} "
                f"latent dimensions; choose two different numbers between 1 and {d}"
            )
        if self.data_dims is not None:
            chosen, dim = tuple(self.data_dims), self.data.dim
            if self.is_image:
                raise InputError("--data-dims chooses coordinates of point data for the pair plot; this run is "
                                 "on images: drop --data-dims")
            if not (2 <= len(chosen) <= 5 and len(set(chosen)) == len(chosen) and all(0 <= i < dim for i in chosen)):
                raise InputError(f"--data-dims takes 2 to 5 different data coordinates between 1 and {dim} (this "
                                 f"data has D = {dim}); got {','.join(str(i + 1) for i in chosen)}")
        if self.points is not None and (self.points.ndim != 2 or self.points.shape[1] != self.data.dim):
            raise InputError(
                f"the chosen points must have shape (m, {self.data.dim}) like the data, got {tuple(self.points.shape)}"
            )

    @classmethod
    def from_run(cls, run: Run, *, n_points: int = 2000, **options: Any) -> PlotContext:
        """The context of a loaded run: its training split, cut to ``n_points`` points.

        Without ``dims``, a model with more than two latent dimensions is shown on its two
        most used ones (largest variance of the code over the data, i.e. the most active
        units), since the first two may well be collapsed.
        """
        data = data_registry.load_dataset(run.config.data, "train")
        if len(data) > n_points:
            data = subset(data, n_points)
        if options.get("dims") is None:
            c = None if run.condition is None or getattr(run.model, "cond_dim", 0) == 0 else run.condition.tensor(data)
            options["dims"] = most_active_dims(run.model, data, c)
        return cls(
            model=run.model,
            data=data,
            config=run.config,
            history=run.history,
            metrics=run.metrics,
            failure=run.failure,
            condition=run.condition,
            **options,
        )

    # What the model and data are, for the applicability checks.
    @property
    def is_vae(self) -> bool:
        """Whether the model has an inference network q(z|x) (a VariationalModel)."""
        return isinstance(self.model, VariationalModel)

    @property
    def is_conditional(self) -> bool:
        return getattr(self.model, "cond_dim", 0) > 0

    @property
    def is_image(self) -> bool:
        return self.data.image_shape is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh generator on the model's device: every figure draws the same noise each time."""
        # Reduced mod 2^64: torch takes 64-bit seeds, and seed · 7919 overflows them for large seeds.
        return torch.Generator(device=self.device).manual_seed((self.seed * 7919 + offset) % 2**64)

    @property
    def c(self) -> Tensor | None:
        """The condition of every point of the context's data (N, C) on the model's device, or
        None for an unconditional model: each point is encoded and decoded with its own c."""
        if not self.is_conditional or self.condition is None:
            return None
        if "c" not in self._shared:
            self._shared["c"] = self.condition.tensor(self.data).to(self.device)
        return self._shared["c"]

    def posterior(self) -> Distribution:
        """q(z|x, c) of the context's data (batch shape (N,), event shape (d,)), encoded once and
        shared by every figure drawn from this context (the encoder is deterministic, so each
        figure sees exactly what encoding the data itself would give)."""
        if "q_z" not in self._shared:
            vae = _require_vae(self.model, "this figure")
            with torch.no_grad():
                self._shared["q_z"] = vae.encode(_x(self.model, self.data), self.c)
        return self._shared["q_z"]

    def codes(self) -> Tensor:
        """The codes embed(x, c) of the context's data, (N, d): μ(x) of a VAE, f(x) of an
        autoencoder; computed once and shared like :meth:`posterior`."""
        if "code" not in self._shared:
            if isinstance(self.model, VariationalModel) and type(self.model).embed is VariationalModel.embed:
                self._shared["code"] = self.posterior().mean  # this family's embed(x) is E_q[z|x]
            else:
                with torch.no_grad():
                    self._shared["code"] = self.model.embed(_x(self.model, self.data), self.c)
        return self._shared["code"]

    def mutual_info(self) -> tuple[float, str] | None:
        """I(x; z) in nats and where it comes from: the run's held-out estimate (metrics.json),
        else the estimate on the context's own data (``diagnostics.elbo_surgery``, one draw per
        point from the context's seed); None for a model without q(z|x)."""
        if not self.is_vae:
            return None
        if "mutual_info" in self.metrics:
            return float(self.metrics["mutual_info"]), "held out"
        if "mi" not in self._shared:
            from vaelab.diagnostics import elbo_surgery

            vae = _require_vae(self.model, "I(x; z)")
            with torch.no_grad():
                # the shared posterior as one batch of all N points: the encoder does not run again
                n = len(self.data)
                surgery = elbo_surgery(vae, _x(self.model, self.data), self.c, generator=self.generator(901),
                                       batch_size=max(n, 1), posteriors=[self.posterior()])
            self._shared["mi"] = (surgery.mutual_info.value, f"on {len(self.data)} training points")
        return self._shared["mi"]

    def mi_words(self) -> str:
        """"I(x; z) = 0.035 nats (held-out)" for titles, or "" without q(z|x)."""
        mi = self.mutual_info()
        return "" if mi is None else f"I(x; z) = {mi[0]:.3g} nats ({mi[1]})"

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.data.labels is None else self.data.labels.cpu().numpy()


@torch.no_grad()
def most_active_dims(model: LatentModel, data: Dataset, c: Tensor | None = None) -> tuple[int, int]:
    """The two latent dimensions (ascending) whose code μ(x) / f(x) varies most over the data.

    (0, 1) for d ≤ 2. A conditional model is encoded with each point's own condition ``c``
    (N, C); without it (None) a conditional model gets (0, 1).
    """
    if model.latent_dim <= 2 or (getattr(model, "cond_dim", 0) > 0 and c is None):
        return (0, 1)
    dev = next(model.parameters()).device
    code = model.embed(data.x[:2000].to(dev), None if c is None else c[:2000].to(dev))  # (n, d)
    var = torch.nan_to_num(code.var(dim=0), nan=-1.0)
    top = sorted(int(i) for i in var.topk(2).indices)
    return (top[0], top[1])


def subset(data: Dataset, n: int) -> Dataset:
    """The first n points of a dataset (toy splits are already in random order)."""
    return data.rows(slice(0, n))

@dataclass(frozen=True)
class FigureSpec:
    """One registered figure.

    name: the file stem and the name used on the command line (``--figures name,…``).
    make: PlotContext -> Figure.
    caption: one line for the report: what the figure shows and what to look for.
    skip_reason: PlotContext -> None when the figure applies to this run, otherwise a short
        reason it does not (shown as a one-line notice, e.g. "the autoencoder has no q(z|x)").
    title: a short human title for report headings.
    heavy: make() computes for seconds, not milliseconds (the density image's IWAE grid): a
        report drawing its PNGs in a second process makes such figures last, so that the
        drawing of the others overlaps the computation (see ``vaelab.png_worker``).
    """

    name: str
    make: Callable[[PlotContext], Figure]
    caption: str
    skip_reason: Callable[[PlotContext], str | None]
    title: str = ""
    heavy: bool = False


def all_of(*checks: Callable[[PlotContext], str | None]) -> Callable[[PlotContext], str | None]:
    """Combine applicability checks: the first reason not to draw wins."""

    def check(ctx: PlotContext) -> str | None:
        for c in checks:
            reason = c(ctx)
            if reason is not None:
                return reason
        return None

    return check


def needs_vae(ctx: PlotContext) -> str | None:
    """The figure needs q(z|x) (any VariationalModel)."""
    # A LatentModel without q(z|x) has a deterministic encoder: an autoencoder, whatever its family name.
    return None if ctx.is_vae else "the autoencoder has no posterior q(z|x)"


def needs_normal_posterior(ctx: PlotContext) -> str | None:
    """The figure reads μ(x), σ(x) of q(z|x) = N(μ, diag σ²) (μ/σ panels, ellipses)."""
    if not ctx.is_vae:
        return needs_vae(ctx)
    return None if has_normal_posterior(ctx.model) else (
        f"the {ctx.model.config.kind} model's q(z|x) is not a factorised Normal N(μ, diag σ²)")


def needs_standard_prior(ctx: PlotContext) -> str | None:
    """The figure draws the prior as N(0, I) (its 1σ / 2σ circles, ε ~ N(0, I))."""
    return None if has_standard_prior(ctx.model) else f"the {ctx.model.config.kind} model's prior is not N(0, I)"


def needs_continuous_latent(ctx: PlotContext) -> str | None:
    """The figure moves z continuously (a grid, a line, a traversal in z): not for a discrete z,
    whose prior lists its values (``has_enumerate_support``: the gumbel family's one-hot codes),
    where the points between codes are not codes of the model."""
    with torch.no_grad():
        prior = ctx.model.prior(None if ctx.c is None else ctx.c[:1])
    if getattr(prior, "has_enumerate_support", False):
        return (f"the {ctx.model.config.kind} model's z is discrete (categorical codes): a grid or a path in z would "
                "decode points between its codes (see the class figures)")
    return None


def unconditional(ctx: PlotContext) -> str | None:
    return "conditional model (see the conditional figures)" if ctx.is_conditional else None


def needs_point_data(ctx: PlotContext) -> str | None:
    """Data-space scatter figures: not for images, and they need at least 2 coordinates."""
    if ctx.is_image:
        return "image data (see the image figures)"
    if ctx.data.dim < 2:
        return f"needs at least 2 data coordinates to draw (this data has D = {ctx.data.dim})"
    return None


def needs_2d_data(ctx: PlotContext) -> str | None:
    """Figures that fill a grid over data space: exactly D = 2."""
    reason = needs_point_data(ctx)
    if reason is None and ctx.data.dim != 2:
        return f"a density grid needs 2-D data (this data has D = {ctx.data.dim})"
    return reason


def needs_history(ctx: PlotContext) -> str | None:
    return None if ctx.history is not None and len(ctx.history) > 0 else "no training history recorded"


def colorbar(fig: Figure, mappable: Any, ax: Axes | Sequence[Axes], label: str) -> None:
    cb = fig.colorbar(mappable, ax=ax, shrink=0.9, pad=0.02, fraction=0.05)
    cb.set_label(label)


def gaussian_pdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def _x(model: LatentModel, data: Dataset) -> Tensor:
    return data.x.to(_device(model))


def _require_vae(model: LatentModel, what: str) -> VariationalModel:
    """``model`` as the VariationalModel (a model with q(z|x)) it must be."""
    if not isinstance(model, VariationalModel):
        raise InputError(f"{what} needs q(z|x), which an autoencoder does not have; use a VAE run")
    return model


def _xy(x: np.ndarray) -> np.ndarray:
    """The first two data coordinates (N, 2) of points (N, D ≥ 2)."""
    if x.shape[1] < 2:
        raise InputError(f"this figure draws data in a plane and needs D ≥ 2 coordinates, got D = {x.shape[1]}")
    return x[:, :2]


def _label_data_axes(ax, x_dim: int, columns: Sequence[str] | None = None) -> None:  # noqa: ANN001 (Axes)
    ax.set_xlabel(x_label(0, x_dim, columns))
    ax.set_ylabel(x_label(1, x_dim, columns))


_points = all_of(unconditional, needs_point_data)

# A conditional model's q(z|x, c) is encoded with each point's own c (PlotContext.c).
_posterior = needs_vae
