"""`vaelab sweep`: the grid and its refusals, the sweep folder (ordinary runs, metrics.csv,
sweep.html), resume after an interruption, divergence of one member, compare of a sweep."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import tiny_config
from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.evaluate import evaluate_run
from vaelab.sweep.folder import METRICS_CSV, REPORT_FILE, SWEEP_FILE, member_dir
from vaelab.sweep.grid import GridError, expand, make_grid, parse_flags, sweep_table
from vaelab.sweep.run import groups_of, run_sweep
from vaelab.train import TrainingInterrupted

runner = CliRunner()
TINY = ["--data", "ring", "--n-train", "256", "--n-test", "128", "--hidden", "16,16", "--epochs", "3",
        "--batch-size", "64", "--eval-k", "16", "--objective", "elbo"]


def _base():
    return tiny_config(train={"objective": "elbo", "epochs": 8})


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# -- the grid ------------------------------------------------------------------------------------


def test_flags_become_typed_lists_of_any_train_flag():
    lists = parse_flags(["--beta", "0.25,0.5", "--latent-dim=1,2", "--hidden", "16/16,16", "--lambda-rec", "1,10",
                         "--objective", "elbo", "--lr-schedule", "constant,cosine"])
    assert lists == {"train.beta": [0.25, 0.5], "model.latent_dim": [1, 2], "model.hidden": [[16], [16, 16]],
                     "model.lambda_rec": [1.0, 10.0], "train.objective": ["elbo"],
                     "train.lr_schedule": ["constant", "cosine"]}
    assert all(isinstance(v, int) for v in lists["model.latent_dim"])


def test_single_values_go_to_the_base_and_lists_make_the_axes():
    flags = ["--objective", "elbo", "--likelihood", "gaussian", "--beta", "0,4", "--lambda-rec", "1,10"]
    base, grid = make_grid(tiny_config(), parse_flags(flags), seeds=2)
    assert base.train.objective == "elbo" and "objective" in base.train.model_fields_set
    assert [a.dotted for a in grid.axes] == ["train.beta", "model.lambda_rec", "train.seed"]
    members = expand(base, grid)
    assert grid.size == len(members) == 8
    assert members[0].name == "beta=0.0,lambda_rec=1.0,seed=0"
    assert {m.config.model.recon_var for m in members} == {1.0, 0.1}  # λ_rec = 1/σ²
    assert {m.config.train.seed for m in members} == {0, 1}
    assert len({m.name for m in members}) == 8


def test_the_sweep_table_of_a_toml_file():
    lists, seeds = sweep_table({"seeds": 3, "train": {"beta": [0, 4]}, "model": {"hidden": [[8], [16, 16]]}})
    assert lists == {"train.beta": [0, 4], "model.hidden": [[8], [16, 16]]} and seeds == 3
    with pytest.raises(GridError, match=r"train.beta = 4 must be a list"):
        sweep_table({"train": {"beta": 4}})
    with pytest.raises(GridError, match=r"train.betta is no setting"):
        sweep_table({"train": {"betta": [1, 2]}})


def test_cli_takes_the_grid_from_the_config_file_and_flags_win(tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text('[data]\nname = "ring"\nn_train = 256\nn_test = 128\n[model]\nhidden = [16]\n'
                   '[train]\nobjective = "elbo"\nepochs = 1\nbatch_size = 128\n[eval]\nk = 8\n'
                   '[sweep.train]\nbeta = [0.0, 1.0, 2.0]\nlr = [0.001, 0.003]\n')
    result = _cli("sweep", "--config", cfg, "--beta", "0,4", "--out", tmp_path / "s", "--no-report")
    assert result.exit_code == 0, result.output
    names = [m["name"] for m in json.loads((tmp_path / "s" / SWEEP_FILE).read_text())["members"]]
    assert names == ["beta=0.0,lr=0.001", "beta=0.0,lr=0.003", "beta=4.0,lr=0.001", "beta=4.0,lr=0.003"]


@pytest.mark.parametrize(("args", "message"), [
    (["--beta", "0,-1"], r"train.beta \(--beta\): the value -1.0 is refused"),
    (["--latent-dim", "1,x"], r"--latent-dim: 'x' is not an integer"),
    (["--bta", "0,1"], r"--bta: no such setting"),
    (["--beta", "1,,2"], r"--beta: '1,,2' has an empty value"),
    (["--beta", "1,1"], r"the value 1.0 is given twice"),
    (["--data-seed", "1,2"], r"data.seed \(--data-seed\): several values \[1, 2\] are refused"),
    (["--n-train", "100,200"], r"--n-train is given twice"),
    (["--seeds", "0"], r"--seeds .* positive integer; got 0"),
    (["--seed", "1,2", "--seeds", "2"], r"--seeds N and a list of --seed values"),
    (["--recon-var", "0.1,1", "--lambda-rec", "1,10"], r"same knob"),
    (["--beta", "1,2", "--model", "ae"], r"member beta=1.0 is refused.*--beta.*does not apply"),
    (["--lr", "0.1,1e39"], r"the value 1e\+39 is refused.*float32"),
    (["--overwrite"], r"--overwrite: a sweep never replaces a folder"),
    (["--beta"], r"--beta needs its values"),
])
def test_bad_grid_values_are_refused_before_any_folder_is_written(tmp_path, args, message):
    out = tmp_path / "sweep"
    result = _cli("sweep", *TINY, *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert __import__("re").search(message, " ".join(result.output.split())), result.output
    assert not out.exists()


def test_evaluation_settings_take_one_value():
    with pytest.raises(GridError, match=r"eval.k \(--eval-k\): several values \[10, 20\] are refused"):
        make_grid(_base(), parse_flags(["--eval-k", "10,20"]))
    base, grid = make_grid(_base(), parse_flags(["--eval-k", "10"]))
    assert base.eval.k == 10 and grid.axes == ()


def test_resume_takes_no_grid(tmp_path):
    result = _cli("sweep", "--out", tmp_path, "--resume", "--beta", "1,2")
    assert result.exit_code == 2 and "--resume continues the sweep" in result.output


def test_groups_follow_the_shapes():
    base, grid = make_grid(_base(), parse_flags(["--beta", "0,4", "--latent-dim", "1,2"]))
    groups = groups_of(expand(base, grid))
    assert [[m.name for m in g] for g in groups] == [["beta=0.0,latent_dim=1", "beta=4.0,latent_dim=1"],
                                                     ["beta=0.0,latent_dim=2", "beta=4.0,latent_dim=2"]]


# -- the sweep folder ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_2x2(tmp_path_factory):
    """β ∈ {0, 4} × latent size ∈ {1, 2}: two groups of two stackable members."""
    base, grid = make_grid(_base(), parse_flags(["--beta", "0,4", "--latent-dim", "1,2"]))
    out = tmp_path_factory.mktemp("sweeps") / "s"
    rows = run_sweep(base, grid, out)
    return base, grid, out, rows


def test_sweep_members_are_ordinary_runs_that_load_evaluate_and_plot(sweep_2x2, tmp_path):
    from vaelab.plots import make_figures

    _, _, out, rows = sweep_2x2
    assert [r.status for r in rows] == ["done"] * 4
    for row in rows:
        run = ckpt.load(row.path)
        assert run.config.train.beta == row.values["train.beta"]
        assert run.config.model.latent_dim == row.values["model.latent_dim"] == run.model.latent_dim
        assert run.metrics["iwae_nll"] == row.metrics["iwae_nll"]  # the table holds the run's own metrics
        again = evaluate_run(row.path, write=False)
        assert again["iwae_nll"] == pytest.approx(row.metrics["iwae_nll"])  # same k and seed: same number
    paths = make_figures(rows[0].path, ["samples", "latent_space"], out_dir=tmp_path / "fig")
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)
    from vaelab.explorer.app import create_app

    client = create_app([r.path for r in rows]).test_client()
    assert client.get("/").status_code == 200


def test_metrics_csv_and_sweep_html_hold_every_member(sweep_2x2):
    import csv

    _, _, out, rows = sweep_2x2
    table = list(csv.DictReader((out / METRICS_CSV).open()))
    assert [t["name"] for t in table] == [r.name for r in rows]
    assert list(table[0]) == ["name", "beta", "latent_dim", "status", "elbo", "recon", "kl", "iwae_nll",
                              "active_units", "mutual_info", "seconds"]
    for t, row in zip(table, rows, strict=True):
        assert float(t["kl"]) == row.metrics["kl"] and float(t["seconds"]) > 0
        assert math.isclose(float(t["elbo"]), -(row.metrics["recon"] + row.metrics["kl"]), rel_tol=1e-9)
    page = (out / REPORT_FILE).read_text()
    for row in rows:
        assert row.name in page
    for title in ("Samples per configuration", "Rate–distortion", "Against beta", "Against latent_dim",
                  "Training curves"):
        assert title in page
    assert page.count("<img") == 5


def test_beta_0_and_beta_4_members_end_with_very_different_kl(sweep_2x2):
    _, _, _, rows = sweep_2x2
    kl = {(r.values["train.beta"], r.values["model.latent_dim"]): r.metrics["kl"] for r in rows}
    for latent in (1, 2):
        assert kl[(4.0, latent)] < 0.5 * kl[(0.0, latent)], kl


def _files(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_resume_after_an_interruption_finishes_the_rest_and_keeps_finished_members(sweep_2x2, tmp_path):
    base, grid, full, _ = sweep_2x2
    out = tmp_path / "s"
    seen: list[str] = []

    def on_progress(name, info):
        seen.append(name)

    def should_stop():  # mid-training of the second group (latent size 2)
        return sum("latent_dim=2" in n for n in seen) >= 5

    with pytest.raises(TrainingInterrupted):
        run_sweep(base, grid, out, on_progress=on_progress, should_stop=should_stop)
    first = [m for m in expand(base, grid) if m.config.model.latent_dim == 1]
    kept = {m.name: _files(member_dir(out, m.name)) for m in first}
    assert all("metrics.json" in files for files in kept.values())  # evaluated before the interruption
    assert not (out / METRICS_CSV).exists()
    rows = run_sweep(base, grid, out, resume=True)
    assert [r.status for r in rows] == ["done"] * 4
    assert {m: _files(member_dir(out, m)) for m in kept} == kept  # byte for byte
    for row in rows:  # and every member ends exactly as in the uninterrupted sweep
        a, b = ckpt.load(row.path).model.state_dict(), ckpt.load(member_dir(full, row.name)).model.state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_resume_refuses_another_grid_and_a_new_sweep_refuses_a_used_folder(sweep_2x2):
    base, grid, out, _ = sweep_2x2
    with pytest.raises(GridError, match="already exists and is not empty"):
        run_sweep(base, grid, out)
    other_base, other = make_grid(_base(), parse_flags(["--beta", "0,2"]))
    with pytest.raises(GridError, match="started with another grid"):
        run_sweep(other_base, other, out, resume=True)


def test_a_diverging_member_does_not_stop_the_others(tmp_path):
    base, grid = make_grid(_base(), parse_flags(["--lr", "0.003,1e10"]))
    rows = run_sweep(base, grid, tmp_path / "s")
    good, bad = rows
    assert good.status == "done" and math.isfinite(good.metrics["iwae_nll"])
    assert bad.status.startswith("diverged at step") and bad.metrics == {}
    assert ckpt.load(bad.path).failure is not None
    assert "diverged at step" in (tmp_path / "s" / METRICS_CSV).read_text()
    assert 'class="bad"' in (tmp_path / "s" / REPORT_FILE).read_text()


def test_jobs_train_groups_in_processes_with_the_same_result(sweep_2x2, tmp_path):
    from vaelab.sweep.run import SweepInterrupted

    base, grid, full, _ = sweep_2x2
    with pytest.raises(SweepInterrupted, match="resume with"):  # the children are stopped wherever they are
        run_sweep(base, grid, tmp_path / "s", jobs=2, should_stop=lambda: True)
    rows = run_sweep(base, grid, tmp_path / "s", jobs=2, resume=True)
    for row in rows:
        a, b = ckpt.load(row.path).model.state_dict(), ckpt.load(member_dir(full, row.name)).model.state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_cli_sweep_prints_the_table_and_compare_takes_the_folder(tmp_path):
    out = tmp_path / "s"
    result = _cli("sweep", *TINY, "--beta", "0,4", "--out", out)
    assert result.exit_code == 0, result.output
    lines = [line.split("│") for line in result.output.splitlines() if line.count("│") > 5]
    cells = [[c.strip() for c in line[1:-1]] for line in lines]
    assert [(c[0], c[1]) for c in cells if c[1] == "done"] == [("0", "done"), ("4", "done")], result.output
    assert "sweep.html" in result.output
    assert (out / METRICS_CSV).is_file() and (out / REPORT_FILE).is_file()
    before = {p.name: _files(p) for p in (out / "runs").iterdir()}
    result = _cli("sweep", "--out", out, "--resume")  # a finished sweep resumes to the same folder
    assert result.exit_code == 0, result.output
    assert {p.name: _files(p) for p in (out / "runs").iterdir()} == before
    result = _cli("compare", out, "--out", tmp_path / "cmp", "--figures", "samples")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "beta=0.0" in page and "beta=4.0" in page


def test_the_rate_axis_shows_mutual_information_beside_the_kl_from_zero(tmp_path):
    """The sweep's second panel is the rate: I(x; z) (solid) beside the KL (dotted), from 0 (the
    KL alone hides a collapse: the review's D5); it replaced an active-units count."""
    from vaelab.sweep.folder import MemberRow
    from vaelab.sweep.report import SEED_AXIS, axis_figure

    rows = [MemberRow(name=f"m{i}", values={"train.beta": b, SEED_AXIS: 0}, status="done",
                      metrics={"iwae_nll": 1.0 + b, "mutual_info": 2.0 / (1 + b), "kl": 3.0 / (1 + b)},
                      seconds=1.0, path=tmp_path)
            for i, b in enumerate((0.5, 1.0, 2.0))]
    fig = axis_figure(rows, "train.beta")
    assert fig is not None
    rate = fig.axes[1]
    assert "I(x; z)" in rate.get_title() and rate.get_ylim()[0] == 0
    drawn = sorted(round(float(y), 6) for line in rate.get_lines() for y in line.get_ydata())
    assert drawn == sorted(round(v, 6) for b in (0.5, 1.0, 2.0) for v in (2.0 / (1 + b), 3.0 / (1 + b)))


def test_a_long_run_of_stackable_members_is_cut_into_near_equal_stacks_of_at_most_the_limit():
    """The default 2-D member's widest activation is 256 rows x k 4 x 256 floats: 8 members per
    stack (beyond it the stack leaves the caches); 20 β values make stacks of 7, 7 and 6, in grid
    order, and members of another shape stay apart."""
    from vaelab.config import RunConfig
    from vaelab.train import stack_limit

    base = RunConfig()
    assert stack_limit(base.model, base.train) == 8
    betas = ",".join(str(0.1 * (i + 1)) for i in range(20))
    base, grid = make_grid(base, parse_flags(["--beta", betas]))
    members = expand(base, grid)
    groups = groups_of(members)
    assert [len(g) for g in groups] == [7, 7, 6]
    assert [m.name for g in groups for m in g] == [m.name for m in members]
    # ELBO (one sample per point): 256 x 256 floats per member, so 32 share a stack
    elbo = RunConfig.from_dict({"train": {"objective": "elbo"}})
    assert stack_limit(elbo.model, elbo.train) == 32
    base, grid = make_grid(_base(), parse_flags(["--beta", "0,4", "--latent-dim", "1,2"]))
    assert len(groups_of(expand(base, grid))) == 2


def test_a_beta_sweep_without_a_named_objective_trains_every_member_on_the_elbo():
    """β ≠ 1 without --objective is a β-VAE (the β-ELBO); in a β sweep the β = 1 member trains the
    plain ELBO too, so the members compare β-VAEs and stack as one group; a named objective stays."""
    from vaelab.config import RunConfig
    from vaelab.sweep.run import _with_objectives

    def members(base: RunConfig, *flags: str) -> list:
        shared, grid = make_grid(base, parse_flags(list(flags)))
        return _with_objectives(shared, expand(shared, grid))

    beta = members(RunConfig(), "--beta", "1,4")
    assert [m.config.train.objective for m in beta] == ["elbo", "elbo"]
    assert len(groups_of(beta)) == 1
    assert [m.config.train.objective for m in members(RunConfig(), "--lr", "1e-3,3e-3")] == ["iwae", "iwae"]
    named = RunConfig().with_overrides({"train": {"objective": "iwae"}})
    assert [m.config.train.objective for m in members(named, "--beta", "1,4")] == ["iwae", "iwae"]


# -- members changed or damaged outside the sweep (audit 0.2: RO13, SW30) -------------------------


def _copy(sweep_2x2, tmp_path):
    import shutil

    base, grid, full, _ = sweep_2x2
    return base, grid, Path(shutil.copytree(full, tmp_path / "s"))


def test_a_member_resumed_alone_with_another_budget_is_marked_changed(sweep_2x2, tmp_path):
    """RO13: `vaelab train --out SWEEP/runs/MEMBER --resume --epochs 10` left the member listed as
    "done" beside members of 8 epochs; the train command, the table, metrics.csv and sweep.html
    now say that it differs from the grid."""
    base, grid, out = _copy(sweep_2x2, tmp_path)
    name = "beta=4.0,latent_dim=1"
    result = _cli("train", "--out", member_dir(out, name), "--resume", "--epochs", "10", "--device", "cpu",
                  "--no-report", "--no-eval")
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"member {name} of the sweep" in said and "--epochs 10 (grid: 8)" in said, result.output
    rows = run_sweep(base, grid, out, resume=True)
    changed = {r.name: r.remark for r in rows if r.remark}
    assert changed == {name: "changed: --epochs 10 (grid: 8)"}
    assert [r.status for r in rows] == ["done"] * 4 and all(r.metrics for r in rows)  # evaluated again
    import csv

    table = {t["name"]: t["status"] for t in csv.DictReader((out / METRICS_CSV).open())}
    assert table[name] == "done (changed: --epochs 10 (grid: 8))" and table["beta=0.0,latent_dim=1"] == "done"
    assert "was changed outside the sweep: --epochs 10 (grid: 8)" in (out / REPORT_FILE).read_text()
    result = _cli("sweep", "--out", out, "--resume", "--no-report")
    assert result.exit_code == 0, result.output
    assert "was changed outside the sweep" in " ".join(result.output.split()), result.output


def test_a_finished_member_with_a_damaged_state_does_not_stop_the_sweep(sweep_2x2, tmp_path):
    """SW30: one finished member's damaged state.pt stopped the whole `sweep --resume` ("train
    again with --overwrite", which sweeps lack). A finished member needs no state: it stands,
    marked, and the sweep goes on."""
    base, grid, out = _copy(sweep_2x2, tmp_path)
    name = "beta=0.0,latent_dim=2"
    state = member_dir(out, name) / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    result = _cli("sweep", "--out", out, "--resume", "--no-report")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"{name}: " in said and "state.pt: does not match the sha256" in said, result.output
    assert f"delete {member_dir(out, name)} and run `vaelab sweep --out {out} --resume`" in said, result.output
    rows = run_sweep(base, grid, out, resume=True)
    assert [r.status for r in rows] == ["done"] * 4 and all(r.metrics for r in rows)
    assert {r.name: r.remark for r in rows if r.remark} == {name: "state.pt damaged"}


def test_an_unfinished_member_with_a_damaged_state_is_left_and_the_others_finish(tmp_path):
    """SW30, an interrupted member: it cannot be continued without its state, so it is left as
    it is and named; the other members train and the table is written; the command exits 1."""
    base, grid = make_grid(_base(), parse_flags(["--beta", "0,4"]))
    out = tmp_path / "s"
    steps = []

    with pytest.raises(TrainingInterrupted):
        run_sweep(base, grid, out, on_progress=lambda name, info: steps.append(name),
                  should_stop=lambda: len(steps) >= 10)
    name = "beta=0.0"
    state = member_dir(out, name) / "state.pt"
    state.write_bytes(b"damaged")
    result = _cli("sweep", "--out", out, "--resume", "--no-report")
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert f"1 of 2 members could not be trained ({name})" in said and "cannot be continued" in said, result.output
    rows = {r.name: r for r in run_sweep(base, grid, out, resume=True)}
    assert rows[name].status == "damaged" and rows[name].metrics == {}
    assert rows["beta=4.0"].status == "done" and rows["beta=4.0"].metrics
    assert "damaged" in (out / METRICS_CSV).read_text()


def test_a_cli_sweep_writes_every_members_report_and_links_it(tmp_path):
    """D26: sweep.html's rows opened bare run folders; `vaelab sweep` writes each member's
    report.html (unless --no-report) and the rows link to it."""
    out = tmp_path / "s"
    result = _cli("sweep", *TINY, "--beta", "0,4", "--out", out)
    assert result.exit_code == 0, result.output
    page = (out / REPORT_FILE).read_text()
    for name in ("beta=0.0", "beta=4.0"):
        report = (member_dir(out, name) / "report.html").read_text()
        assert f'href="runs/{name}/report.html"' in page
        # quick: the figures that compute for seconds are left out, and named
        assert "<b>density</b>: left out of this quick report" in report and 'id="fig-samples"' in report
    bare = tmp_path / "bare"
    result = _cli("sweep", *TINY, "--beta", "0,4", "--out", bare, "--no-report")
    assert result.exit_code == 0, result.output
    assert not any((member_dir(bare, n) / "report.html").exists() for n in ("beta=0.0", "beta=4.0"))
    assert 'href="runs/beta=0.0/"' in (bare / REPORT_FILE).read_text()


def test_sweep_members_score_the_held_out_points_as_their_solo_runs_do(sweep_2x2, tmp_path):
    """The history's heldout_* columns (the train against held-out loss): a sweep member records
    them as `vaelab train` with its settings does, to float precision."""
    from vaelab.train import train_run

    base, grid, out, _ = sweep_2x2
    member = expand(base, grid)[1]
    swept = ckpt.load(member_dir(out, member.name)).history
    solo = train_run(member.config, tmp_path / "solo").history
    assert "heldout_elbo" in swept.rows[0]
    for column in ("heldout_elbo", "heldout_recon", "heldout_kl"):
        a, b = swept.column(column), solo.column(column)
        assert len(a) == len(b) == base.train.epochs
        assert all(math.isclose(u, v, rel_tol=1e-4, abs_tol=1e-5) or (math.isnan(u) and math.isnan(v))
                   for u, v in zip(a, b, strict=True)), (column, a, b)
