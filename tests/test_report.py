"""The HTML run report, the comparison page and the plot / report / compare commands."""

from __future__ import annotations

import base64
import math
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from helpers import tiny_config
from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.compare import write_comparison
from vaelab.config import RunConfig
from vaelab.plots import PlotContext, plan
from vaelab.report import write_report
from vaelab.reproduce import REPRODUCE_FILE, config_toml, reproduce_command, train_flags

FAST = {"density_k": 4, "density_grid": 16, "n_points": 200}
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}


class Checker(HTMLParser):
    """Collects images, links and scripts, and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if key in attrs and not (attrs[key].startswith("#") or attrs[key].startswith("data:image/png;base64,")):
                self.urls.append(attrs[key])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def check_html(text: str) -> Checker:
    assert text.startswith("<!DOCTYPE html>")
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert checker.urls == []
    assert "script" not in checker.tags and "link" not in checker.tags
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), "external URL in the page"
    for src in checker.images:
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    return checker


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "ring-run"
    shutil.copytree(trained_run, dest)
    return dest


def test_report_embeds_every_applicable_figure(run_copy):
    ckpt.write_json(run_copy / ckpt.METRICS_FILE, {"n": 128, "iwae_nll": 2.5, "kl_per_dim": [0.1, 0.2]})
    notes: list[str] = []
    path = write_report(run_copy, notify=notes.append, **FAST)
    assert path == run_copy / "report.html"
    text = path.read_text()
    checker = check_html(text)
    run = ckpt.load(run_copy)
    apply, skip = plan(PlotContext.from_run(run, **FAST))
    assert len(checker.images) == len(apply) >= 10
    for spec in apply:
        assert f'id="fig-{spec.name}"' in text and (run_copy / "figures" / f"{spec.name}.png").is_file()
        assert spec.caption.split(":")[0][:30].replace("'", "&#x27;") in text
    assert "IWAE NLL" in text and "2.5" in text
    assert text.count("<tr>") > 5 and "history.csv" not in text  # 5 epochs: every history row is shown
    assert "completed" in text and "FAILED" not in text
    assert len(notes) == len({r for _, r in skip})  # one line per reason a figure does not apply


def test_reproduce_command_rebuilds_the_same_config(monkeypatch, tmp_path):
    """Every flag exists on `vaelab train` and the command parses back to the same config."""
    train_opts = {o for p in typer.main.get_command(app).commands["train"].params for o in p.opts}
    assert set(train_flags().values()) <= train_opts
    cfg = RunConfig.from_dict({
        "data": {"name": "moons", "n_train": 500, "seed": 3},
        "model": {"latent_dim": 5, "hidden": [64, 32], "likelihood": "gaussian", "recon_var": 0.05},
        "train": {"beta": 0.5, "lr": 1e-3, "epochs": 7, "objective": "iwae", "k": 4},
        "eval": {"k": 50},
    })
    command, needs_toml = reproduce_command(cfg, tmp_path / "again")
    assert not needs_toml and command.startswith("vaelab train --data moons ")
    captured = {}

    class Stop(Exception):
        pass

    def fake_train_run(config, out, **kw):
        captured["config"], captured["out"] = config, out
        raise Stop

    import vaelab.train  # noqa: F401 (the package's `train` attribute is a function, so go through sys.modules)

    monkeypatch.setattr(sys.modules["vaelab.train"], "train_run", fake_train_run)
    result = CliRunner().invoke(app, command.split()[1:])
    assert isinstance(result.exception, Stop), result.output
    assert captured["config"] == cfg and Path(captured["out"]) == tmp_path / "again"


def test_options_without_a_flag_go_through_a_toml_file(run_copy):
    run = ckpt.load(run_copy)
    assert run.config.train.diversity_samples != RunConfig().train.diversity_samples  # no flag for it
    command, needs_toml = reproduce_command(run.config, run_copy)
    assert needs_toml and f"--config {run_copy / REPRODUCE_FILE}" in command
    (run_copy / "x.toml").write_text(config_toml(run.config))
    assert RunConfig.from_toml(run_copy / "x.toml") == run.config
    write_report(run, names=["training_curves"], **FAST)
    assert RunConfig.from_toml(run_copy / REPRODUCE_FILE) == run.config
    assert "diversity_samples = 64" in (run_copy / "report.html").read_text()


def test_failed_run_still_gets_a_report(run_copy):
    history = ckpt.load_history(run_copy)
    bad = dict(history.rows[-1], epoch=6, step=history.rows[-1]["step"] + 1, loss=math.nan, recon=math.nan)
    history.append(bad)
    ckpt.write_history(run_copy, history)  # as a diverged run records it (train.run.record_failure)
    ckpt.write_json(run_copy / ckpt.FAILURE_FILE, {"step": int(bad["step"]), "epoch": 6,
                                                   "message": "training stopped: the loss became NaN"})
    text = write_report(run_copy, names=["training_curves", "samples"], **FAST).read_text()
    check_html(text)
    assert 'class="failure"' in text and "FAILED" in text and "the loss became NaN" in text
    assert '<tr class="bad">' in text and "NaN" in text
    assert text.count("<img ") == 2


def test_unknown_figure_names_are_refused(run_copy):
    with pytest.raises(ValueError, match="valid names: .*training_curves"):
        write_report(run_copy, names=["samples", "histogram"])


def test_compare_puts_runs_side_by_side(trained_run, tmp_path):
    from vaelab.train import train_run

    other = tmp_path / "beta-half"
    train_run(tiny_config(train={"epochs": 2, "beta": 0.5}), other)
    path = write_comparison([trained_run, other], tmp_path / "cmp", names=["samples", "training_curves"], **FAST)
    text = path.read_text()
    checker = check_html(text)
    assert len(checker.images) == 4
    assert "train.beta" in text and "train.epochs" in text and "beta-half" in text and "ring" in text
    assert (tmp_path / "cmp" / "figures" / "beta-half" / "samples.png").is_file()
    with pytest.raises(ValueError, match="at least two"):
        write_comparison([trained_run], tmp_path / "cmp2")


def test_cli_plot_report_and_compare(run_copy, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["plot", str(run_copy), "--figures", "samples,latent_grid,density",
                                 "--format", "svg", "--dims", "2,1", "--n-points", "200"])
    assert result.exit_code == 0, result.output
    assert (run_copy / "figures" / "samples.svg").is_file() and (run_copy / "figures" / "latent_grid.svg").is_file()
    result = runner.invoke(app, ["plot", str(run_copy), "--figures", "samples,bogus"])
    assert result.exit_code == 2 and "valid names" in result.output
    result = runner.invoke(app, ["plot", str(run_copy), "--dims", "1,9"])
    assert result.exit_code == 2 and "between 1 and 2" in result.output
    result = runner.invoke(app, ["report", str(run_copy), "--figures", "training_curves,z_vs_eps",
                                 "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert len(check_html((tmp_path / "r.html").read_text()).images) == 2
    result = runner.invoke(app, ["compare", str(run_copy), str(run_copy), "--out", str(tmp_path / "c"),
                                 "--figures", "training_curves"])
    assert result.exit_code == 0, result.output
    assert "final training −ELBO" in result.output and (tmp_path / "c" / "compare.html").is_file()


def test_train_writes_the_report_unless_told_not_to(tmp_path):
    runner = CliRunner()
    base = ["train", "--data", "ring", "--n-train", "128", "--n-test", "64", "--hidden", "8", "--epochs", "1",
            "--eval-k", "4", "--no-eval"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "report: " in result.output and (tmp_path / "a" / "report.html").is_file()
    result = runner.invoke(app, [*base, "--no-report", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "b" / "report.html").exists()


def test_report_pngs_have_the_pixels_of_a_default_png(trained_run):
    # The report's PNGs use a faster zlib level: a different encoding of exactly the same image.
    import io

    import numpy as np
    from matplotlib.image import imread

    from vaelab.html import figure_png
    from vaelab.plots import render_all

    ctx = PlotContext.from_run(ckpt.load(trained_run))
    # A fresh figure for each (a figure drawn twice may settle its constrained layout differently).
    buf = io.BytesIO()
    next(render_all(ctx, ["latent_space"])).figure.savefig(buf, format="png")
    default = buf.getvalue()
    fast = figure_png(next(render_all(ctx, ["latent_space"])).figure)
    assert fast != default  # another encoding ...
    np.testing.assert_array_equal(imread(io.BytesIO(fast)), imread(io.BytesIO(default)))  # ... same pixels
    assert len(fast) < 1.25 * len(default)


def _savefig_png(fig) -> bytes:
    import io

    from vaelab.html import PNG_COMPRESS_LEVEL

    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return buf.getvalue()


def test_figure_png_draws_once_and_writes_the_bytes_of_savefig(trained_run, monkeypatch):
    # figure_png skips savefig's layout-only first draw: the same bytes for every report figure
    # (fresh figures each side), in one draw instead of two, and the figure keeps its canvas.
    from matplotlib.figure import Figure

    from vaelab.html import figure_png
    from vaelab.plots import render_all

    ctx = PlotContext.from_run(ckpt.load(trained_run), **FAST)
    names = [item.spec.name for item in render_all(ctx) if item.figure is not None]
    assert len(names) >= 8
    draws = []
    real_draw = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda self, renderer: draws.append(1) or real_draw(self, renderer))
    for name in names:
        expected = _savefig_png(next(render_all(ctx, [name])).figure)
        fig = next(render_all(ctx, [name])).figure
        canvas = fig.canvas
        draws.clear()
        assert figure_png(fig) == expected, name
        assert len(draws) == 1, name
        assert fig.canvas is canvas


def test_figure_png_follows_the_users_savefig_settings(trained_run):
    # Where the caller's rcParams change what savefig writes, figure_png writes what savefig does.
    import matplotlib

    from vaelab.html import figure_png
    from vaelab.plots import render_all

    ctx = PlotContext.from_run(ckpt.load(trained_run), **FAST)
    plain = figure_png(next(render_all(ctx, ["latent_space"])).figure)
    with matplotlib.rc_context({"savefig.facecolor": "black", "savefig.dpi": 50}):
        dark = figure_png(next(render_all(ctx, ["latent_space"])).figure)
        expected = _savefig_png(next(render_all(ctx, ["latent_space"])).figure)
    assert dark == expected and dark != plain


def _figure_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "figures").glob("*.png"))}


def test_report_drawn_in_a_second_process_has_the_same_bytes(run_copy, monkeypatch):
    # The PNGs shared out between the worker process and this one are byte for byte what drawing
    # here alone gives, and the worker leaves neither its process nor its temporary folder behind.
    from vaelab import png_worker

    workers: list[png_worker.PngWorker] = []
    real_init = png_worker.PngWorker.__init__

    def recording_init(self):
        real_init(self)
        workers.append(self)

    monkeypatch.setattr(png_worker.PngWorker, "__init__", recording_init)
    write_report(run_copy, background=False, **FAST)
    here = _figure_bytes(run_copy)
    assert len(here) >= 10 and not workers
    shutil.rmtree(run_copy / "figures")
    text = write_report(run_copy, background=True, **FAST).read_text()
    assert _figure_bytes(run_copy) == here
    assert len(workers) == 1 and workers[0]._proc is not None and workers[0]._proc.poll() is not None
    assert not workers[0].folder.exists()
    names = [spec.name for spec in plan(PlotContext.from_run(ckpt.load(run_copy), **FAST))[0]]
    assert [text.index(f'id="fig-{n}"') for n in names] == sorted(text.index(f'id="fig-{n}"') for n in names)


def test_report_draws_here_what_the_worker_does_not_deliver(run_copy, monkeypatch):
    # A worker that cannot start, or one that exits at once: the report is the same, drawn here.
    from vaelab import png_worker

    write_report(run_copy, background=False, **FAST)
    here = _figure_bytes(run_copy)

    def cannot_start(self):
        raise OSError("no processes here")

    with monkeypatch.context() as m:
        m.setattr(png_worker.PngWorker, "__init__", cannot_start)
        shutil.rmtree(run_copy / "figures")
        write_report(run_copy, background=True, **FAST)
        assert _figure_bytes(run_copy) == here
    with monkeypatch.context() as m:
        m.setattr(png_worker.sys, "executable", shutil.which("false") or "/bin/false")  # starts, then dies
        shutil.rmtree(run_copy / "figures")
        write_report(run_copy, background=True, **FAST)
        assert _figure_bytes(run_copy) == here


def test_worker_draws_with_the_callers_matplotlib_settings(trained_run):
    # rcParams read at drawing time (here savefig.facecolor) reach the worker; the caller's stay as they were.
    import matplotlib

    from vaelab.html import figure_png
    from vaelab.plots import render_all
    from vaelab.png_worker import PngWorker

    ctx = PlotContext.from_run(ckpt.load(trained_run), **FAST)
    before = dict(matplotlib.rcParams)
    with matplotlib.rc_context({"savefig.facecolor": "black"}):
        here = figure_png(next(render_all(ctx, ["latent_space"])).figure)
        with PngWorker() as worker:
            assert worker.submit("latent_space", next(render_all(ctx, ["latent_space"])).figure)
            assert worker.submit("broken", lambda: None) is False  # cannot pickle: the caller draws it
            there = worker.finish()
    assert there == {"latent_space": here}
    assert here != figure_png(next(render_all(ctx, ["latent_space"])).figure)  # black made a difference
    assert dict(matplotlib.rcParams) == before


def test_heavy_figures_come_last_only_when_asked(trained_run):
    from vaelab.plots import render_all

    ctx = PlotContext.from_run(ckpt.load(trained_run), **FAST)
    specs = plan(ctx)[0]
    apply = [spec.name for spec in specs]
    heavy = [spec.name for spec in specs if spec.heavy]
    assert "density" in heavy and apply[-1] not in heavy
    late = [item.spec.name for item in render_all(ctx, heavy_last=True)]
    assert late == [n for n in apply if n not in heavy] + heavy


def test_worker_only_where_it_finds_a_cpu_of_its_own(monkeypatch):
    from vaelab import png_worker

    monkeypatch.setattr(png_worker, "usable_cpus", lambda: 2)
    monkeypatch.setattr(png_worker.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert png_worker.spare_cpu(1) and not png_worker.spare_cpu(2)  # torch on both CPUs: no room
    monkeypatch.setattr(png_worker.os, "getloadavg", lambda: (1.8, 1.8, 1.8))
    assert not png_worker.spare_cpu(1)  # another busy process: the worker would only take turns


def test_plot_writes_the_png_bytes_of_savefig(trained_run, tmp_path):
    # `vaelab plot` PNGs: drawn once, the bytes of a plain savefig (PIL's default compression).
    import io

    from vaelab.plots import render_all, save_figure

    ctx = PlotContext.from_run(ckpt.load(trained_run), **FAST)
    buf = io.BytesIO()
    next(render_all(ctx, ["reconstructions"])).figure.savefig(buf, format="png")
    path = save_figure(next(render_all(ctx, ["reconstructions"])).figure, tmp_path / "r.png")
    assert path.read_bytes() == buf.getvalue()


def test_worker_and_caller_share_the_figures_out_once_each(trained_run):
    # finish(draw_here): the caller takes over what the worker has not started; every figure is
    # drawn exactly once, by one of them, and the bytes are the same whoever drew it.
    from vaelab.html import figure_png
    from vaelab.plots import render_all
    from vaelab.png_worker import PngWorker

    ctx = PlotContext.from_run(ckpt.load(trained_run), **FAST)
    names = [spec.name for spec in plan(ctx)[0]][:6]
    expected = {n: figure_png(next(render_all(ctx, [n])).figure) for n in names}
    figures = {n: next(render_all(ctx, [n])).figure for n in names}
    here: list[str] = []
    with PngWorker() as worker:
        assert all(worker.submit(n, figures[n]) for n in names)
        pngs = worker.finish(lambda n: here.append(n) or figure_png(figures[n]))
        left = sorted(p.name for p in worker.folder.iterdir())
    assert pngs == expected
    assert len(here) == len(set(here)) and here == [n for n in reversed(names) if n in here]  # last sent first
    # each pickle was claimed by exactly one side: renamed to .here (this process) or .worker
    assert sorted(n for n in names if f"{n}.here" in left) == sorted(here)
    assert sorted(n for n in names if f"{n}.worker" in left) == sorted(set(names) - set(here))


@pytest.mark.parametrize("user_threads", [False, True])
def test_cli_report_gives_the_worker_a_cpu_by_running_torch_one_thread_fewer(trained_run, tmp_path, monkeypatch,
                                                                              user_threads):
    # Where torch's threads take every free CPU but one fewer would leave one to the PNG worker,
    # `vaelab report` draws with the worker on torch's threads less one, and puts them back after;
    # threads the user set (OMP_NUM_THREADS) are left as they are and the default policy decides.
    import torch

    from vaelab import png_worker, report

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    seen = []
    real = report.write_report

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), kwargs.get("background")))
        return real(*args, **{**kwargs, "background": False})  # the drawing itself is tested above

    monkeypatch.setattr(report, "write_report", spy)
    monkeypatch.setattr(png_worker, "spare_cpu", lambda threads: threads <= 1)
    if user_threads:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = CliRunner().invoke(app, ["report", str(run), "--figures", "samples"])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert seen == ([(2, None)] if user_threads else [(1, True)])
    assert after == 2


def test_compare_draws_the_density_of_every_run_on_one_colour_scale(tmp_path):
    """D14: each run's density image ended at its own maximum, so a diffuse (collapsed) model and a
    peaked one looked equally bright. On data without a known density the scale is now shared."""
    import torch

    from vaelab.compare import shared_density_scale
    from vaelab.plots.data_space import density_top, model_density_image, plot_density
    from vaelab.train import train_run

    runs = [train_run(tiny_config(data={"name": "moons", "n_train": 200}, train={"epochs": 2, "beta": b}),
                      tmp_path / f"b{b}") for b in (1.0, 8.0)]
    contexts = [PlotContext.from_run(ckpt.load(r.path), density_k=4, density_grid=16, n_points=200) for r in runs]
    tops = [density_top(model_density_image(c.model, c.data, grid=16, k=4, generator=c.generator(4)))
            for c in contexts]
    assert tops[0] != tops[1]
    # A density below 1 everywhere keeps its own top (the old scale was floored at 1: a dark image).
    import numpy as np

    assert density_top(np.array([[0.2, np.nan], [0.1, np.inf]])) == 0.2
    assert shared_density_scale(contexts, None) == max(tops)
    assert shared_density_scale(contexts, ["samples"]) is None  # no density figure, nothing to share
    fig = plot_density(contexts[0].model, contexts[0].data, grid=16, k=4, generator=contexts[0].generator(4),
                       vmax=max(tops))
    assert fig.axes[0].get_images()[0].norm.vmax == pytest.approx(max(tops))
    # Where the data knows its density, each image already ends at the true maximum: nothing to share.
    ring = [PlotContext.from_run(ckpt.load(train_run(tiny_config(train={"epochs": 1}), tmp_path / f"r{i}").path),
                                 density_k=4, density_grid=16, n_points=200) for i in range(2)]
    assert ring[0].data.log_prob is not None and shared_density_scale(ring, None) is None
    path = write_comparison([r.path for r in runs], tmp_path / "cmp", names=["density"], **FAST)
    assert f"share one colour scale (0 to {max(tops):.3g}" in path.read_text()
    assert torch.equal(contexts[0].data.x, contexts[1].data.x)


def test_the_report_shows_each_sample_quality_number_beside_its_floor():
    from vaelab.report import metrics_table

    quality = {"n_samples": 1000, "n_test": 800, "fd": 3.25, "precision": 0.7, "recall": 0.5, "density": 0.9,
               "coverage": 0.8, "floor": {"fd": 0.91, "precision": 0.8, "recall": 0.81, "density": 1.0,
                                          "coverage": 0.9, "n_per_half": 400},
               "classifier": {"test_accuracy": 0.896, "path": "/x", "settings": {"epochs": 4}},
               "class_accuracy": {"per_class": {"a": 0.5, "b": 0.7}, "overall": 0.6}}
    text = re.sub(r"<[^>]+>", "|", metrics_table({"sample_quality": quality}))
    assert "1000 samples vs 800 test images" in text and "compare within vaelab only" in text
    assert "Fréchet distance||3.25 (0.91)" in text and "recall (k = 3)||0.5 (0.81)" in text
    assert "test accuracy||0.896" in text and "(mean over labels)||0.6" in text
    assert "path" not in text and "settings" not in text  # the classifier's record stays in metrics.json
