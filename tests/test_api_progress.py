"""The Python API as a notebook uses it (issue 21, review newcomer-0.2 §2.2, §2.3, §2.7, §1.12):
progress on request and silence otherwise, config fields assigned like the constructor takes
them, and the device picked as the command line picks it."""

from __future__ import annotations

import inspect
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import vaelab
from helpers import tiny_config
from vaelab.config import ConfigError, ModelConfig, RunConfig
from vaelab.errors import VaelabError
from vaelab.models import family
from vaelab.objectives import describe_loss
from vaelab.progress import ProgressLine, format_duration

# --------------------------------------------------------------------------- progress


def _loss_name(cfg: RunConfig) -> str:
    return describe_loss(family(cfg.model.kind), cfg.train)


def test_train_run_prints_nothing_without_progress(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    vaelab.train_run(tiny_config(), tmp_path / "r")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_train_run_progress_shows_steps_loss_name_and_times(tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config()  # 256 points, batches of 64, 3 epochs: 12 steps
    vaelab.train_run(cfg, tmp_path / "r", progress=True)
    out, err = capfd.readouterr()
    assert out == ""  # the progress line goes to stderr, never into the cell's result or a pipe
    assert "step 12/12" in err
    assert _loss_name(cfg) in err  # the objective's own name, e.g. "−IWAE bound (k = 4)"
    assert "recon" in err and "kl" in err
    assert "elapsed" in err and "left" in err
    assert err.endswith("\n")  # the line is finished: later output starts on a line of its own


def test_train_run_progress_calls_the_users_on_step_too(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    steps: list[int] = []
    vaelab.train_run(tiny_config(), tmp_path / "r", progress=True, on_step=lambda info: steps.append(info.step))
    assert steps == list(range(1, 13))
    assert "step 12/12" in capfd.readouterr().err


def test_fit_progress(capfd: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(train={"objective": "elbo"})
    data = vaelab.load_dataset(cfg.data)
    model = vaelab.build_model(cfg.model, 2, seed=0)
    vaelab.fit(model, data.x, cfg.train)
    assert capfd.readouterr() == ("", "")
    vaelab.fit(model, data.x, cfg.train, progress=True)
    err = capfd.readouterr().err
    assert "step 12/12" in err and describe_loss(model, cfg.train) in err


def test_evaluate_run_progress(trained_run: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    run = vaelab.load(trained_run)
    vaelab.evaluate_run(run, k=4, write=False)
    assert capfd.readouterr() == ("", "")
    vaelab.evaluate_run(run, k=4, write=False, progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert re.search(r"batch 1/1\b", err), err  # 128 test points, batches of 500
    assert "k = 4" in err and "elapsed" in err and err.endswith("\n")


def test_evaluate_reports_each_batch(trained_run: Path) -> None:
    run = vaelab.load(trained_run)
    test = vaelab.load_dataset(run.config.data, "test")  # 128 points
    seen: list[tuple[int, int]] = []
    a = vaelab.evaluate(run.model, test, k=4, seed=0, batch_size=50,
                        on_batch=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]  # the total is known before the first batch
    b = vaelab.evaluate(run.model, test, k=4, seed=0, batch_size=50)
    assert a == b  # reporting changes no number


def test_evaluate_progress_line(trained_run: Path, capfd: pytest.CaptureFixture[str]) -> None:
    run = vaelab.load(trained_run)
    test = vaelab.load_dataset(run.config.data, "test")
    vaelab.evaluate(run.model, test, k=4, batch_size=50, progress=True)
    assert "batch 3/3" in capfd.readouterr().err


def test_progress_line_rewrites_one_line_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = iter(range(100))
    stream = Tty()
    line = ProgressLine(stream, clock=lambda: float(next(clock)))
    line.show("step 1/3 long text here")
    line.show("step 2/3")
    line.close("step 3/3 done")
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, rewritten with carriage returns
    assert text.count("\r") == 3
    # a shorter text blanks out what is left of the longer one before it
    assert "\rstep 2/3" + " " * (len("step 1/3 long text here") - len("step 2/3")) + "\r" in text


def test_progress_line_in_a_log_file_writes_whole_lines_now_and_then() -> None:
    times = iter([0.0, 1.0, 2.0, 30.0, 31.0])
    stream = io.StringIO()  # not a terminal, not a notebook: a log file
    line = ProgressLine(stream, clock=lambda: next(times))
    for i in range(4):
        line.show(f"step {i}")
    line.close("step 4")
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().splitlines() == ["step 0", "step 3", "step 4"]


def test_format_duration() -> None:
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(float("nan")) == "?"


@pytest.mark.slow
def test_progress_in_a_jupyter_notebook_is_one_updating_line(tmp_path: Path) -> None:
    """Executed in a real kernel: the cell's stderr is one line, redrawn with carriage returns."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    given = json.loads(tiny_config().model_dump_json(exclude_unset=True))
    code = (f"import vaelab\ncfg = vaelab.RunConfig.from_dict({given!r})\n"
            f"run = vaelab.train_run(cfg, {str(tmp_path / 'r')!r}, progress=True)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    streams = [o for o in nb.cells[0].outputs if o.get("output_type") == "stream"]
    assert {o["name"] for o in streams} == {"stderr"}
    text = "".join(o["text"] for o in streams)
    assert "\r" in text  # the notebook shows only what follows the last carriage return of a line
    shown = [ln.rsplit("\r", 1)[-1] for ln in text.rstrip("\n").split("\n")]
    assert len(shown) == 1 and "step 12/12" in shown[0]


def _cli_eval(run_dir: Path, monkeypatch: pytest.MonkeyPatch, *, terminal: bool, ci: bool) -> str:
    from rich.console import Console

    from vaelab.cli import app, evaluation

    # The bar's console, as it is made on a terminal or not (CliRunner's output is no terminal).
    monkeypatch.setattr(evaluation, "console", Console(force_terminal=True, width=200) if terminal else Console())
    if ci:
        monkeypatch.setenv("CI", "1")
    else:
        monkeypatch.delenv("CI", raising=False)
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--k", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_eval_shows_progress_in_a_terminal(trained_run: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = Path(shutil.copytree(trained_run, tmp_path / "run"))
    shown = _cli_eval(run_dir, monkeypatch, terminal=True, ci=False)
    assert "evaluating" in shown and "1/1" in shown
    assert "held-out evaluation" in shown  # the table follows
    quiet = _cli_eval(run_dir, monkeypatch, terminal=False, ci=True)  # a CI log: no bar
    assert "evaluating" not in quiet and "held-out evaluation" in quiet


# --------------------------------------------------------------------------- config assignment


def test_lambda_rec_assigned_like_the_constructor() -> None:
    cfg = RunConfig()
    cfg.model.lambda_rec = 10
    assert cfg.model.recon_var == ModelConfig(lambda_rec=10).recon_var == pytest.approx(0.1)
    assert cfg.model.lambda_rec == pytest.approx(10)
    assert "recon_var" in cfg.model.model_fields_set  # a user setting, as --lambda-rec makes it
    assert "lambda_rec" not in cfg.model.model_dump() and not cfg.model.family_tables
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again.model.recon_var == cfg.model.recon_var


@pytest.mark.parametrize("value", [0, -1, "10", True])
def test_a_bad_lambda_rec_is_a_config_error_and_changes_nothing(value: Any) -> None:
    cfg = RunConfig()
    with pytest.raises(ConfigError, match=r"model.lambda_rec.*positive number") as err:
        cfg.model.lambda_rec = value
    assert "pydantic" not in str(err.value)
    assert cfg.model.recon_var == 0.1 and "recon_var" not in cfg.model.model_fields_set


@pytest.mark.parametrize(("section", "field", "value", "words"), [
    ("train", "epochs", -1, "train.epochs: Input should be greater than 0 (got -1)"),
    ("train", "lr", "1e-3", "train.lr: Input should be a valid number"),
    ("model", "latent_dim", 0, "model.latent_dim: Input should be greater than 0 (got 0)"),
    ("data", "condition", "colour", "data.condition: unknown condition 'colour'"),
    ("model", "hidden", [16, -1], "model.hidden: every hidden layer size must be positive"),
])
def test_a_bad_assignment_is_a_config_error(section: str, field: str, value: object, words: str) -> None:
    cfg = RunConfig()
    before = getattr(getattr(cfg, section), field)
    with pytest.raises(ConfigError) as err:
        setattr(getattr(cfg, section), field, value)
    message = str(err.value)
    assert words in message
    assert "errors.pydantic.dev" not in message and "validation error for" not in message
    assert "keeps" in message  # says what happened to the config: nothing changed
    assert isinstance(err.value, VaelabError)
    assert getattr(getattr(cfg, section), field) == before


def test_an_assignment_that_breaks_a_rule_across_fields_is_undone() -> None:
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="warmup_epochs"):
        cfg.train.beta_schedule = "warmup"  # needs its length first (as the constructor says)
    assert cfg.train.beta_schedule == "constant" and "beta_schedule" not in cfg.train.model_fields_set
    cfg.train.warmup_epochs = 5
    cfg.train.beta_schedule = "warmup"  # in this order it is fine
    assert cfg.train.beta_schedule == "warmup"


def test_an_unknown_field_is_named_with_the_ones_that_exist() -> None:
    cfg = RunConfig()
    with pytest.raises(ConfigError, match=r"train.epoch: unknown option.*did you mean epochs\?"):
        cfg.train.epoch = 3
    with pytest.raises(ConfigError, match=r"model.hiden: unknown option.*did you mean hidden\?"):
        cfg.model.hiden = [8]
    assert cfg.model.model_extra == {}  # the refused key is not kept
    cfg.model.tempered = {"tau_end": 0.5}  # a family's options table is still a key of [model]
    assert cfg.model.family_tables == {"tempered": {"tau_end": 0.5}}


def test_good_assignments_still_work() -> None:
    cfg = RunConfig()
    cfg.train.epochs = 30
    cfg.train.objective = "elbo"
    cfg.model.hidden = [32]
    assert (cfg.train.epochs, cfg.train.objective, cfg.model.hidden) == (30, "elbo", [32])
    assert {"epochs", "objective"} <= cfg.train.model_fields_set


# --------------------------------------------------------------------------- device


def test_train_run_and_evaluate_run_pick_the_device_as_the_cli_does() -> None:
    assert inspect.signature(vaelab.train_run).parameters["device"].default == "auto"
    assert inspect.signature(vaelab.evaluate_run).parameters["device"].default is None  # None: "auto"
    from vaelab.cli.common import pick_device as cli_pick
    from vaelab.devices import pick_device

    here = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device() == pick_device("auto") == cli_pick("auto") == torch.device(here)


def test_auto_prefers_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a GPU here: torch is told CUDA is available, and each entry point must ask for it."""
    import importlib

    import vaelab.train.run as run_mod
    from vaelab.cli.common import pick_device as cli_pick

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli_pick("auto") == torch.device("cuda")

    class Reached(Exception):
        pass

    def stop_at(*args: object, **kwargs: object) -> None:
        raise Reached([a for a in (*args, *kwargs.values()) if isinstance(a, torch.device | str)])

    monkeypatch.setattr(run_mod, "training_data", stop_at)
    with pytest.raises(Reached) as got:
        vaelab.train_run(tiny_config(), tmp_path / "r")
    assert torch.device("cuda") in got.value.args[0]
    evaluate_mod = importlib.import_module("vaelab.evaluate")  # `import vaelab.evaluate as` gives the function
    monkeypatch.setattr(evaluate_mod.ckpt, "load", stop_at)
    with pytest.raises(Reached) as got:
        vaelab.evaluate_run(tmp_path / "somewhere")
    assert torch.device("cuda") in got.value.args[0]


def test_an_unknown_device_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match=r"unknown device 'gpu'; use auto, cpu, cuda, cuda:N or mps"):
        vaelab.train_run(tiny_config(), tmp_path / "r", device="gpu")
    assert not (tmp_path / "r").exists()
