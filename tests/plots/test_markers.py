"""Every label's points leave pixels on the PNG, at every marker size the figures use."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vaelab.plots.common import LABEL_MARKERS, label_colour, point_size, scatter_labels

N_LABELS = len(LABEL_MARKERS)


def rendered(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float)


@pytest.mark.parametrize("n_per_label", [5, 100, 1000])
def test_every_label_leaves_pixels_of_its_colour(n_per_label):
    """Labels sit in separate vertical strips; each strip must hold pixels of its label's colour."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(N_LABELS), n_per_label)
    xy = np.stack([labels + rng.uniform(0.2, 0.8, len(labels)), rng.uniform(0, 1, len(labels))], 1)
    fig = Figure(figsize=(8, 3), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    scatter_labels(ax, xy, labels, None, legend=False)  # size from point_size(n), as the figures do
    ax.set_xlim(0, N_LABELS)
    ax.set_ylim(-0.1, 1.1)
    pixels = rendered(fig)
    strip = pixels.shape[1] / N_LABELS
    assert point_size(len(xy)) <= 30
    for k in range(N_LABELS):
        # scatter_labels draws with alpha 0.8 over the white background
        colour = 0.8 * np.array(label_colour(k)[:3]) * 255 + 0.2 * 255
        part = pixels[:, int(k * strip) + 2:int((k + 1) * strip) - 2]
        hits = int((np.abs(part - colour).max(axis=-1) < 40).sum())
        assert hits >= min(n_per_label, 50), f"label {k} (marker {LABEL_MARKERS[k]!r}) left {hits} pixels"
