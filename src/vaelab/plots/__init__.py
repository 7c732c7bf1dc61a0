"""Every figure of a run, behind one registry: name -> (function, caption, applies-to check).

Use it three ways:

- in a notebook, call a plot function directly; each returns a ``matplotlib.figure.Figure``::

      from vaelab.plots.data_space import plot_samples
      plot_samples(run.model, dataset)

- by name, for a loaded run: ``render(PlotContext.from_run(run), "latent_grid")``;
- all at once into the run directory: ``make_figures(run_dir)`` (what ``vaelab plot`` does).

Adding figures: a module defines ``FigureSpec`` entries and either lists itself in
``FIGURE_MODULES`` (its module-level ``FIGURES`` list is registered on first use) or calls
``register_figure``. The report and ``vaelab plot`` simply iterate over the registered
figures whose ``skip_reason`` returns None for the run.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vaelab import checkpoint as ckpt
from vaelab.errors import InputError
from vaelab.html import figure_png
from vaelab.plots.common import FigureSpec, PlotContext

log = logging.getLogger(__name__)

FIGURES_DIR = ckpt.FIGURES_DIR
FORMATS = ("png", "svg", "pdf")

# Modules whose ``FIGURES`` lists are registered, in report order. Add yours here.
FIGURE_MODULES: list[str] = [
    "vaelab.plots.data_space", "vaelab.plots.latent", "vaelab.plots.course", "vaelab.plots.images",
    "vaelab.plots.conditional", "vaelab.plots.curves", "vaelab.plots.flows",
    "vaelab.plots.priors",
    "vaelab.plots.hierarchy", "vaelab.plots.discrete", "vaelab.plots.vq",
]

_REGISTRY: dict[str, FigureSpec] = {}
_loaded: set[str] = set()


def register_figure(spec: FigureSpec) -> None:
    """Add a figure to the registry (names are unique: they become file names)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise InputError(f"a figure named {spec.name!r} is already registered")
    if not spec.name.replace("_", "").isalnum():
        raise InputError(f"figure name {spec.name!r} must be letters, digits and underscores (it is a file name)")
    _REGISTRY[spec.name] = spec


def _load_modules() -> None:
    for module in FIGURE_MODULES:
        if module not in _loaded:
            for spec in getattr(importlib.import_module(module), "FIGURES", []):
                register_figure(spec)
            _loaded.add(module)


def registry() -> dict[str, FigureSpec]:
    """Every registered figure by name, in report order."""
    _load_modules()
    return dict(_REGISTRY)


def figure_names() -> list[str]:
    return list(registry())


def check_names(names: Sequence[str] | None) -> list[str]:
    """The requested figure names (all when None), checked: unknown names raise with the valid list."""
    known = registry()
    if names is None:
        return list(known)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(
            f"unknown figure name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(known)}"
        )
    if not names:
        raise InputError(f"no figure names given; valid names: {', '.join(known)}")
    return list(dict.fromkeys(names))


def parse_names(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` checked against the registry; None / ``"all"`` -> None (all)."""
    if text is None or text.strip().lower() == "all":
        return None
    return check_names(text.split(","))


def plan(ctx: PlotContext, names: Sequence[str] | None = None) -> tuple[list[FigureSpec], list[tuple[str, str]]]:
    """Split the requested figures into those that apply to this run and (name, reason) skips."""
    specs = registry()
    apply, skip = [], []
    requested = check_names(names)
    if ctx.is_image:  # an image run opens with its reconstructions and samples, then the latent diagnostics
        requested = sorted(requested, key=lambda n: not n.startswith("image_"))
    for name in requested:
        reason = specs[name].skip_reason(ctx)
        if reason is None:
            apply.append(specs[name])
        else:
            skip.append((name, reason))
    return apply, skip


def render(ctx: PlotContext, name: str) -> Figure:
    """Draw one registered figure for the context (raises if it does not apply)."""
    spec = registry()[check_names([name])[0]]
    reason = spec.skip_reason(ctx)
    if reason is not None:
        raise InputError(f"figure {name!r} does not apply to this run: {reason}")
    return spec.make(ctx)


@dataclass
class Rendered:
    """The outcome of drawing one figure: a Figure, or the error that stopped it."""

    spec: FigureSpec
    figure: Figure | None = None
    error: str | None = None


def render_all(
    ctx: PlotContext, names: Sequence[str] | None = None, notify: Callable[[str], None] | None = None,
    *, heavy_last: bool = False,
) -> Iterator[Rendered]:
    """Draw every requested figure that applies, one at a time (so memory stays flat).

    Figures that do not apply are announced through ``notify`` (one line each) and skipped.
    A figure that fails to draw (e.g. a model whose weights became NaN) is yielded with its
    error instead of stopping the others; the caller shows it. Figures come in registry order,
    or with ``heavy_last`` the ``FigureSpec.heavy`` ones after the others (each figure draws
    its own noise from its own generator, so the order changes no figure).
    """
    apply, skip = plan(ctx, names)
    if heavy_last:
        apply = [s for s in apply if not s.heavy] + [s for s in apply if s.heavy]
    # One line per reason, so whole families that never apply (image, conditional) stay short.
    by_reason: dict[str, list[str]] = {}
    for name, reason in skip:
        by_reason.setdefault(reason, []).append(name)
    for reason, skipped in by_reason.items():
        _notify(notify, f"skipped {', '.join(skipped)}: {reason}")
    for spec in apply:
        try:
            yield Rendered(spec, figure=spec.make(ctx))
        except (ValueError, RuntimeError, FloatingPointError, IndexError) as err:
            log.warning("figure %s failed: %s", spec.name, err)
            _notify(notify, f"figure {spec.name} could not be drawn: {err}")
            yield Rendered(spec, error=f"{type(err).__name__}: {err}")


def _notify(notify: Callable[[str], None] | None, message: str) -> None:
    if notify is None:
        log.info(message)
    else:
        notify(message)


def save_figure(fig: Figure, path: Path, fmt: str | None = None) -> Path:
    """Write a Figure to ``path`` (png / svg / pdf, from ``fmt`` or the suffix)."""
    fmt = fmt or path.suffix.lstrip(".") or "png"
    if fmt not in FORMATS:
        raise InputError(f"unknown figure format {fmt!r}; choose one of {', '.join(FORMATS)}")
    # Through the one file writer: a full disk or a read-only run names the file and leaves
    # an existing figure as it was; a special file or a plain file named like a folder is refused.
    with ckpt.atomic_file(path) as fh:
        if fmt == "png":  # savefig's bytes, drawn once instead of twice (see vaelab.html.figure_png)
            fh.write(figure_png(fig, compress_level=None))
        else:
            fig.savefig(fh, format=fmt)
    return path


def load_context(run: Any, **options: Any) -> PlotContext:
    """A PlotContext from a run directory (path) or a loaded ``checkpoint.Run``."""
    if isinstance(run, str | Path):
        run = ckpt.load(run)
    return PlotContext.from_run(run, **options)


def make_figures(
    run: Any,
    names: Sequence[str] | None = None,
    fmt: str = "png",
    *,
    out_dir: str | Path | None = None,
    ctx: PlotContext | None = None,
    notify: Callable[[str], None] | None = None,
    **options: Any,
) -> list[Path]:
    """Draw the requested figures (all by default) of a run into ``RUN/figures/<name>.<fmt>``.

    ``run`` is a run directory or a loaded Run; ``options`` go to ``PlotContext`` (dims,
    points, seed, n_points, density_k …). Figures that do not apply or fail are reported
    through ``notify`` and left out. Returns the paths written.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown figure format {fmt!r}; choose one of {', '.join(FORMATS)}")
    names = None if names is None else check_names(names)
    if ctx is None:
        ctx = load_context(run, **options)
    run_path = Path(run) if isinstance(run, str | Path) else Path(run.path)
    out = Path(out_dir) if out_dir is not None else run_path / FIGURES_DIR
    paths = []
    for item in render_all(ctx, names, notify):
        if item.figure is not None:
            paths.append(save_figure(item.figure, out / f"{item.spec.name}.{fmt}", fmt))
    return paths


__all__ = [
    "FIGURES_DIR",
    "FIGURE_MODULES",
    "FORMATS",
    "FigureSpec",
    "PlotContext",
    "Rendered",
    "check_names",
    "figure_names",
    "load_context",
    "make_figures",
    "parse_names",
    "plan",
    "register_figure",
    "registry",
    "render",
    "render_all",
    "save_figure",
]
