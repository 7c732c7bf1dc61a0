"""Every code block of the README runs as written (issue 8, item 14).

Each fenced block is taken from README.md and run in a fresh folder:

* ``python`` blocks run in one namespace, in order (as in a notebook);
* ``toml`` blocks are written to a file and trained with ``vaelab train --config``;
* ``bash`` blocks run line by line: ``vaelab ...`` lines through the CLI in this process,
  ``printf ... > file`` lines as the shell would; a ``vaelab train --nproc`` line (it starts
  torchrun) as a real command.

What a user brings themselves (their own points, images, label files) is made by
``user_files`` below. Two kinds of lines cannot run on these machines and are checked as far as
they can be: the quick start (``scripts/setup.sh`` is what CI itself runs), and commands that
download a dataset (only the MNIST test split is on disk): their options are parsed and the
configuration they build is validated, without training.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED_DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data" / "mnist").is_dir()), None)
DOWNLOADS = ("mnist", "fashion-mnist", "kmnist")

pytestmark = pytest.mark.slow


def blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def user_files(folder: Path) -> None:
    """The files the README's commands expect the user to have."""
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 3, 400)
    xy = np.stack([t * np.cos(2 * t), t * np.sin(2 * t)], 1) + rng.normal(0, 0.1, (400, 2))
    rows = ["x1,x2,t"] + [f"{a:.4f},{b:.4f},{c:.4f}" for (a, b), c in zip(xy, t, strict=True)]
    (folder / "points.csv").write_text("\n".join(rows) + "\n")
    (folder / "pts.csv").write_text("x1,x2\n1.0,0.5\n-0.5,2.0\n0.0,-1.5\n")
    (folder / "labels.txt").write_text("mode 0\nmode 3\n5\n")
    (folder / "radii.txt").write_text("1.0\n2.5\n4.0\n")
    from PIL import Image

    for cls in ("circle", "square"):
        (folder / "my_images" / cls).mkdir(parents=True)
        for i in range(12):
            img = np.zeros((28, 28), dtype=np.uint8)
            r = 4 + i % 6
            yy, xx = np.mgrid[:28, :28]
            mask = (np.hypot(yy - 14, xx - 14) < r) if cls == "circle" else (abs(yy - 14) < r) & (abs(xx - 14) < r)
            img[mask] = 255
            Image.fromarray(img).save(folder / "my_images" / cls / f"{i}.png")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder laid out like a clone: ../shared/data beside it when this machine has it."""
    work = tmp_path / "work"
    work.mkdir()
    if SHARED_DATA is not None:
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    user_files(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("VAELAB_DATA_DIR", str(tmp_path / "no-downloads-here"))
    return work


def _needs_download(args: list[str]) -> bool:
    if "--data" not in args:
        return False
    name = args[args.index("--data") + 1]
    return name in DOWNLOADS and "--data-dir" not in args


def _validate_only(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse a training command and validate the config it builds, without data or training."""
    from vaelab.cli import app
    from vaelab.settings import check_settings

    seen = {}

    class Parsed(Exception):
        pass

    def fake_train_run(config, out, **kwargs):
        check_settings(config)
        seen["config"] = config
        raise Parsed

    import vaelab.train  # noqa: F401 (the package's `train` attribute is a function)

    with monkeypatch.context() as m:
        m.setattr(sys.modules["vaelab.train"], "train_run", fake_train_run)
        m.setattr(sys.modules["vaelab.cli.commands"], "_fetch_with_progress", lambda data_cfg: None)
        result = CliRunner().invoke(app, args[1:])
    assert isinstance(result.exception, Parsed), f"{shlex.join(args)}\n{result.output}"
    assert seen["config"].data.name == args[args.index("--data") + 1]


def run_line(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaelab.cli import app

    args = shlex.split(line, comments=True)
    if not args:
        return
    if args[0] == "printf":
        redirect = args.index(">")
        text = args[1].encode().decode("unicode_escape")
        Path(args[redirect + 1]).write_text(text)
        return
    assert args[0] == "vaelab", f"README line the test does not know how to run: {line}"
    if args[1] == "train" and _needs_download(args):
        _validate_only(args, monkeypatch)
        return
    if "--nproc" in args:  # starts torchrun, whose processes run `python -m vaelab`: a real command line
        done = subprocess.run([sys.executable, "-m", "vaelab", *args[1:]], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr[-3000:]}"
        return
    result = CliRunner().invoke(app, args[1:])
    assert result.exit_code == 0 and result.exception is None, f"{line}\n{result.output}"
    assert "Traceback" not in result.output


def test_quick_start_is_what_ci_runs():
    quick = blocks("bash")[0]
    lines = [ln.split("#")[0].strip() for ln in quick.strip().splitlines()]
    assert lines == ["bash scripts/setup.sh && .venv/bin/vaelab train", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("index", range(1, len(blocks("bash"))))
def test_bash_block_runs(index: int, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = blocks("bash")[index]
    if index > 0 and "--data-dir ../shared/data" in block and SHARED_DATA is None:
        pytest.skip("needs ../shared/data/mnist beside the clone")
    for line in block.strip().splitlines():
        run_line(line, monkeypatch)


def test_python_blocks_run_in_order(workdir: Path) -> None:
    namespace: dict[str, object] = {"__name__": "readme"}
    for code in blocks("python"):
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (the README's own code)
    assert Path("runs/demo/model.safetensors").is_file()
    assert np.isfinite(namespace["metrics"]["iwae_nll"])  # type: ignore[index]


@pytest.mark.parametrize("index", range(len(blocks("toml"))))
def test_toml_block_trains(index: int, workdir: Path) -> None:
    from vaelab.cli import app

    Path("c.toml").write_text(blocks("toml")[index])
    result = CliRunner().invoke(app, ["train", "--config", "c.toml", "--out", "runs/toml", "--no-report"])
    assert result.exit_code == 0, result.output


def test_every_block_is_covered():
    """Only the languages above (and the layout picture) appear, so no block escapes the tests."""
    openings, inside = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if not inside:
                openings.append(line[3:].strip())
            inside = not inside
    assert not inside, "an unclosed code fence"
    assert set(openings) == {"", "bash", "python", "toml", "sbatch"}, openings
    assert openings.count("") == 1  # the layout of src/vaelab: a picture of the tree, not code


def test_the_sbatch_script_shown_is_the_one_vaelab_writes(workdir: Path) -> None:
    """The README shows the job array of its `vaelab sweep --slurm --dry-run` line as written from
    /home/me/project with that folder's .venv: the script of the same line here, with this
    folder and this python put in their place, must be the same text."""
    from vaelab.cli import app

    (shown,) = blocks("sbatch")
    (line,) = [ln for block in blocks("bash") for ln in block.splitlines() if "--slurm" in ln and "--dry-run" in ln]
    args = shlex.split(line, comments=True)
    result = CliRunner().invoke(app, args[1:])
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    written = (out / "slurm" / "sweep.sbatch").read_text()
    written = written.replace(sys.executable, "/home/me/project/.venv/bin/python").replace(os.getcwd(),
                                                                                        "/home/me/project")
    assert written == shown
