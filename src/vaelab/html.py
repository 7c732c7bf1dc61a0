"""Generic HTML pieces of the run report and the comparison page: escaping, number format,
embedded PNG figures and the page around a body. Standard library only; no script, no URL."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1rem 2rem 3rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2rem; }
nav a { margin-right: 1rem; } .summary { color: #444; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; } tr.bad td { background: #fde2e2; } td.changed { font-weight: bold; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #333; margin-top: 0.3rem; } figcaption b { color: #000; }
.failure { border: 2px solid #c00; background: #fff0f0; padding: 0.6rem 1rem; color: #900; }
.warning { border: 2px solid #c80; background: #fff8e6; padding: 0.6rem 1rem; color: #740; }
.ok { color: #060; font-weight: bold; } .failed { color: #c00; font-weight: bold; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; border: 1px solid #ddd; white-space: pre-wrap; }
.note { color: #555; font-size: 0.9rem; } .error { color: #c00; }
.compare td { vertical-align: top; } .compare img { max-width: 100%; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt_number(value: Any) -> str:
    """Numbers for tables: ints as is, floats with 4 significant digits, NaN / inf spelled out."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt_number(v) for v in value)
    return str(value)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# zlib level of the report's PNGs. The pixels are the same at every level; level 1 instead of
# PIL's default 6 encodes a figure about 3x faster (a third of a report's drawing time on the
# default 2-D run) for files about 8 % larger (benchmarks/bench_report.py).
PNG_COMPRESS_LEVEL = 1


def figure_png(fig: Any, compress_level: int | None = PNG_COMPRESS_LEVEL) -> bytes:
    """The PNG bytes of a matplotlib Figure: the bytes ``fig.savefig(buf, format="png")`` writes
    (zlib level ``compress_level``; None: PIL's default, exactly what a plain ``savefig`` writes).

    ``savefig`` draws a figure with a layout engine twice: once with drawing disabled, only to
    run the layout, then again for the pixels (with the layout switched off). Drawing once on an
    Agg canvas runs the same layout inside that single draw, so it gives the same bytes (tested)
    and saves the first pass, ~15 % of a report figure's drawing (benchmarks/bench_report.py).
    The shortcut is taken only where savefig would add nothing: with matplotlib's default
    ``savefig.*`` settings (a user's rcParams that change them get ``savefig`` itself). The
    figure keeps its own canvas afterwards, as after ``savefig``.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    pil_kwargs = {} if compress_level is None else {"compress_level": compress_level}
    rc = matplotlib.rcParams
    # The savefig settings under which savefig(format="png") adds nothing to the canvas's own
    # print_png: the figure's dpi, face and edge colours, no transparency, no tight bounding box.
    if (rc["savefig.dpi"] != "figure" or rc["savefig.facecolor"] != "auto" or rc["savefig.edgecolor"] != "auto"
            or rc["savefig.transparent"] or rc["savefig.bbox"] is not None):
        fig.savefig(buf, format="png", pil_kwargs=pil_kwargs)
        return buf.getvalue()
    canvas = fig.canvas
    try:
        FigureCanvasAgg(fig).print_png(buf, pil_kwargs=pil_kwargs)  # one draw: layout, then pixels
    finally:
        fig.set_canvas(canvas)
    return buf.getvalue()


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
