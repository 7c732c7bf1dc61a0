"""The notebooks in examples/ run as a student would run them: headless, top to bottom, in a
fresh kernel with no ``%matplotlib`` magic. Each cell that draws a figure must show it as an image
(the figure renders itself), and no cell may print a warning or fail."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency (scripts/setup.sh --dev)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev dependency (scripts/setup.sh --dev)")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# A cell whose last line is a call of a vaelab figure function is a figure cell.
FIGURE_CALL = re.compile(r"^vaelab\.plot_\w+\(", re.M)


def _last_line(source: str) -> str:
    lines = [ln for ln in source.strip().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return lines[-1] if lines else ""


def test_there_is_a_notebook() -> None:
    assert [p.name for p in NOTEBOOKS] == ["vae_2d_lab.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_shows_its_figures(path: Path, tmp_path: Path) -> None:
    shutil.copy(path, tmp_path / path.name)
    nb = nbformat.read(tmp_path / path.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the traceback) when a cell fails

    figure_cells = [c for c in nb.cells if c.cell_type == "code" and FIGURE_CALL.match(_last_line(c.source))]
    assert len(figure_cells) >= 8, "the lab draws its figures with vaelab.plot_* calls"
    for cell in figure_cells:
        kinds = [o.get("output_type") for o in cell.outputs]
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"cell {cell.source!r} showed no image (outputs: {kinds}; text: " \
                       f"{[o.get('data', {}).get('text/plain') for o in cell.outputs]})"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            assert "warning" not in text.lower(), f"cell {cell.source!r} printed a warning: {text}"
            assert out.get("output_type") != "error"
    # The training cells showed progress, and the runs were written beside the notebook.
    train_cells = [c for c in nb.cells if c.cell_type == "code" and "train_run(" in c.source]
    assert train_cells and all(c.outputs for c in train_cells)
    assert (tmp_path / "runs" / "lab-vae" / "config.json").is_file()
