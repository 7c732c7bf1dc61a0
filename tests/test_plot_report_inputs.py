"""Bad inputs to `vaelab plot` / `report` from the 0.1.0 audit (IDs in the test names): a clear
error naming the option or file, exit 2, no traceback, nothing of the run changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import ModelConfig
from vaelab.data.toy2d import ring
from vaelab.models import build_model
from vaelab.plots.common import PlotContext

runner = CliRunner()


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(trained_run, dest)
    return dest


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_P16_plot_seed_beyond_64_bits_is_refused_by_name(run_copy):
    before = snapshot(run_copy)
    result = runner.invoke(app, ["plot", str(run_copy), "--figures", "samples", "--seed", str(2**80)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "seed" in text and "2^63" in text and "no figure applies" not in text
    assert snapshot(run_copy) == before


def test_large_and_negative_seeds_inside_64_bits_draw():
    data = ring(100, generator=torch.Generator().manual_seed(0))
    model = build_model(ModelConfig(hidden=[8]), 2, seed=0)
    for seed in (-1, 2**63 - 1):
        assert isinstance(PlotContext(model=model, data=data, seed=seed).generator(3), torch.Generator)
    with pytest.raises(ValueError, match="seed"):
        PlotContext(model=model, data=data, seed=2**63)


def test_R02_report_out_a_folder_names_the_folder(run_copy, tmp_path):
    folder = tmp_path / "somewhere"
    folder.mkdir()
    result = runner.invoke(app, ["report", str(run_copy), "--figures", "samples", "--out", str(folder)])
    assert result.exit_code == 2
    assert f"{folder}: is a folder" in " ".join(result.output.split()) and ".tmp" not in result.output
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_R03_report_into_a_read_only_folder_names_the_file_not_a_temp_file(run_copy, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = runner.invoke(app, ["report", str(run_copy), "--figures", "samples",
                                     "--out", str(folder / "r.html")])
    finally:
        folder.chmod(0o755)
    assert result.exit_code == 2
    assert f"{folder / 'r.html'}: cannot write the report" in " ".join(result.output.split())
    assert ".tmp" not in result.output


def test_R03_a_failed_report_write_names_the_file_the_user_gave(run_copy, tmp_path, monkeypatch):
    """The write error (here injected, as root ignores permissions) names --out, not the temp file."""
    from vaelab import checkpoint as ckpt

    target = tmp_path / "ro2" / "r.html"

    real = os.replace

    def refuse(src, dst):  # the one writer's rename into place fails (a read-only folder, as root cannot)
        if Path(dst) != target:
            return real(src, dst)
        raise PermissionError(1, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "replace", refuse)
    result = runner.invoke(app, ["report", str(run_copy), "--figures", "samples", "--out", str(target)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2
    assert not target.exists() and not list(target.parent.glob(f"*{ckpt._TMP_SUFFIX}"))
    assert f"{target}: cannot write (Operation not permitted)" in text and ".tmp" not in text
