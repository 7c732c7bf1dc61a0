"""The command line's help and console (issue 21): options in panels with every default read
from the configs, no markup eaten and no `<bool>` metavars; a progress bar that never reads "0/?";
collapse advice that names only flags the run would take; a CSV text column that names
--label-column; no lock file left in a finished run.

Help is drawn at a fixed width (COLUMNS), so these tests do not depend on the terminal's.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from typing import Any

import pytest
import typer
from rich.console import Console
from rich.progress import Progress
from typer.core import TyperOption
from typer.testing import CliRunner

from vaelab import checkpoint as ckpt
from vaelab.cli import app
from vaelab.cli.common import PANELS, VaelabGroup, config_default, config_flags
from vaelab.config import SECTIONS, ConfigError, RunConfig
from vaelab.presets import DEFAULT_IMAGE_PRESET, preset_overrides

runner = CliRunner()
WIDE = {"COLUMNS": "400"}  # one line per option: a default is never cut by wrapping
TINY = ["--data", "ring", "--n-train", "200", "--n-test", "100", "--hidden", "16,16", "--epochs", "2",
        "--batch-size", "64", "--eval-k", "8", "--device", "cpu", "--no-report"]


def help_of(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def option_lines(text: str) -> dict[str, str]:
    """The help row of each option, by its long name (the first --name of the row)."""
    rows = {}
    for line in text.splitlines():
        found = re.match(r"[│|]\s*(?:\*\s+)?(--[a-z][a-z0-9-]*)", line)
        if found:
            rows[found.group(1)] = " ".join(line.split())
    return rows


def panels_of(text: str) -> dict[str, list[str]]:
    """Panel title -> the options listed in it, in the order help draws them."""
    panels: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        title = re.match(r"\s*╭─ (.+?) ─", line)
        if title:
            current = panels.setdefault(title.group(1), [])
            continue
        found = re.match(r"[│|]\s*(?:\*\s+)?(--[a-z][a-z0-9-]*)", line)
        if found and current is not None:
            current.append(found.group(1))
    return panels


def commands() -> dict[str, Any]:
    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


def fmt(value: Any) -> str | None:
    """A config value as help should show it, worked out here (None: an unset value, which help
    explains in words)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def expected_default(dotted: str) -> str | None:
    """A field's default as help should show it, from the pydantic field."""
    section, field = dotted.split(".")
    cls = RunConfig.model_fields[section].annotation
    return fmt(cls.model_fields[field].get_default(call_default_factory=True))  # type: ignore[union-attr]


# --------------------------------------------------------------------------- panels


def test_every_train_option_is_in_a_panel_in_order():
    train = commands()["train"]
    loose = [p.name for p in train.params if isinstance(p, TyperOption) and p.rich_help_panel not in PANELS]
    assert loose == []
    panels = panels_of(help_of("train"))
    assert list(panels) == list(PANELS)  # Data, Model, Training, Evaluation, Output/run; no "Options"
    shown = [flag for flags in panels.values() for flag in flags]
    assert sorted(shown) == sorted({max(p.opts, key=len) for p in train.params} | {"--help"})
    assert "--latent-dim" in panels["Model"] and "--epochs" in panels["Training"]
    assert "--eval-k" in panels["Evaluation"] and "--out" in panels["Output/run"] and "--data" in panels["Data"]


def test_sweep_help_has_the_same_panels_and_every_train_setting():
    text = help_of("sweep")
    panels = panels_of(text)
    assert list(panels) == list(PANELS)
    shown = {flag for flags in panels.values() for flag in flags}
    sweep_own = {max(p.opts, key=len) for p in commands()["sweep"].params}
    assert set(config_flags()) | sweep_own | {"--help"} == shown
    rows = option_lines(text)
    assert "<float>,..." in rows["--beta"] and "true|false,..." in rows["--compile"]
    assert ",..." not in rows["--n-train"] and ",..." not in rows["--eval-k"]  # shared by every member


def test_the_sweeps_shared_sections_are_the_grids():
    from vaelab.cli.sweep import SHARED_SECTIONS
    from vaelab.sweep.grid import _SHARED_SECTIONS

    assert set(SHARED_SECTIONS) == set(_SHARED_SECTIONS)


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_every_config_default_is_shown(command):
    rows = option_lines(help_of(command))
    image = preset_overrides(DEFAULT_IMAGE_PRESET)
    checked = 0
    for flag, dotted in config_flags().items():
        row = rows[flag]
        assert row.count("(default ") == 1, row  # one default, in one style
        value = expected_default(dotted) if dotted != "model.lambda_rec" else "10"
        if value is not None:
            assert f"(default {value}" in row, row
            checked += 1
        section, field = dotted.split(".")
        if field in image.get(section, {}) and fmt(image[section][field]) != value:
            assert f"image data {fmt(image[section][field])}" in row, row
    assert checked > 35
    # the ones the newcomer review missed, in plain figures
    for flag, words in {"--latent-dim": "(default 2; image data 20)", "--epochs": "(default 250; image data 50)",
                        "--beta": "(default 1)", "--lr": "(default 0.003; image data 0.001)",
                        "--hidden": "(default 256,256; image data 400)", "--k": "(default 4)",
                        "--batch-size": "(default 256; image data 128)", "--eval-k": "(default 1000)",
                        "--activation": "(default tanh; image data relu)", "--n-train": "(default 2000)",
                        "--likelihood": "(default gaussian-learned; image data bernoulli)"}.items():
        assert words in rows[flag], rows[flag]
    assert "elbo where the KL is weighted" in rows["--objective"]  # a default the run decides, in words
    assert "(default auto)" in rows["--device"] and "[default:" not in " ".join(rows.values())


def test_help_follows_the_config_defaults(monkeypatch):
    """The defaults are read from the config classes, not written in the help: change one, and help follows."""
    from vaelab.config import ModelConfig, TrainConfig

    monkeypatch.setattr(ModelConfig.model_fields["latent_dim"], "default", 7)
    monkeypatch.setattr(TrainConfig.model_fields["lr"], "default", 0.25)
    assert config_default("model.latent_dim").startswith("7;")
    rows = option_lines(help_of("train"))
    assert "(default 7; image data 20)" in rows["--latent-dim"]
    assert "(default 0.25; image data 0.001)" in rows["--lr"]


def test_help_does_not_import_torch():
    """tests/test_startup.py checks `train --help`; sweep's help copies train's options, read
    from the configs at help time, and must not need torch either."""
    code = ("from typer.testing import CliRunner\nfrom vaelab.cli import app\nimport sys\n"
            "out = CliRunner().invoke(app, ['sweep', '--help'])\n"
            "print(out.exit_code, 'torch' in sys.modules, '--latent-dim' in out.output)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["0", "False", "True"], proc.stderr


# --------------------------------------------------------------------------- markup and metavars


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_the_config_tables_are_not_eaten_by_markup(command):
    text = help_of(command)
    assert "[data] [model] [train] [eval]" in option_lines(text)["--config"] and "\\[" not in text


@pytest.mark.parametrize("command", sorted(commands()))
def test_no_bool_metavar_in_any_commands_help(command):
    text = help_of(command)
    assert "<bool>" not in text
    rows = option_lines(text)
    assert rows["--help"].split()[1:3] == ["--help", "Show"]  # a plain flag: nothing between name and help


def test_the_group_help_has_no_bool_metavar():
    """`vaelab --help` (--version, --help): the group draws them without <bool> once
    vaelab.cli.__init__ builds app with cls=VaelabGroup."""
    mini = typer.Typer(cls=VaelabGroup, add_completion=False)

    @mini.callback()
    def _main(version: bool = typer.Option(False, "--version", help="print the version")) -> None:
        """A group."""

    @mini.command()
    def one() -> None:
        """A command."""

    assert "<bool>" not in runner.invoke(mini, ["--help"], env=WIDE).output
    assert isinstance(typer.main.get_command(app), VaelabGroup)
    assert "<bool>" not in help_of()


# --------------------------------------------------------------------------- the progress bar


def test_the_step_column_is_empty_until_the_total_is_known():
    from vaelab.cli.console import MofNOnceKnown

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with Progress(MofNOnceKnown(), console=console, auto_refresh=False) as progress:
        task = progress.add_task("loading", total=None)
        progress.refresh()
        progress.update(task, total=40, completed=20)
        progress.refresh()
    assert "0/?" not in out.getvalue() and "20/40" in out.getvalue()


def test_training_never_shows_0_of_unknown_and_leaves_no_lock(tmp_path, monkeypatch):
    """The bar reads "loading data, building the model …" until the first step sets the total;
    the finished run keeps no .vaelab-lock (newcomer review 1.3, 1.17)."""
    import time

    import vaelab.train
    from vaelab.cli import commands as cli_commands

    screen = io.StringIO()
    monkeypatch.setattr(cli_commands, "console", Console(file=screen, force_terminal=True, width=150))
    real = vaelab.train.train_run

    def slow_start(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # the bar redraws (10 times a second) before the data are loaded
        return real(*args, **kwargs)

    monkeypatch.setattr(vaelab.train, "train_run", slow_start)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    drawn = screen.getvalue()
    assert "loading data, building the model" in drawn and "0/?" not in drawn
    assert (out / "metrics.json").is_file() and not (out / ckpt.LOCK_FILE).exists()


def test_a_released_lock_removes_its_file_and_a_held_one_refuses(tmp_path):
    held = ckpt.RunLock(tmp_path).acquire()
    assert (tmp_path / ckpt.LOCK_FILE).exists()
    with pytest.raises(ckpt.RunLockedError):
        ckpt.RunLock(tmp_path).acquire()
    held.release()
    assert not (tmp_path / ckpt.LOCK_FILE).exists() and not ckpt.is_locked(tmp_path)
    with ckpt.RunLock(tmp_path):  # taken again, on a new file
        assert (tmp_path / ckpt.LOCK_FILE).exists() and ckpt.is_locked(tmp_path)
    assert not (tmp_path / ckpt.LOCK_FILE).exists()


# --------------------------------------------------------------------------- collapse advice

COLLAPSED = {"mutual_info": 0.01, "mutual_info_se": 0.005, "active_units": 0, "latent_dim": 2}


def suggested_flags(advice: str) -> list[list[str]]:
    """The flag groups of the advice, as command-line words: "(--objective elbo --free-bits λ)" ->
    ["--objective", "elbo", "--free-bits", "0.5"]; "a lower --beta (this run: 4)" -> --beta at half."""
    groups = []
    for words in re.findall(r"\((--[^)]*)\)", advice):
        groups.append([{"λ": "0.5", "N": "2"}.get(w, w) for w in words.split()])
    lower = re.search(r"a lower --beta \(this run: ([\d.]+)\)", advice)
    if lower:
        groups.append(["--beta", str(float(lower.group(1)) / 2)])
    return groups


def overrides(words: list[str]) -> dict[str, dict[str, Any]]:
    from vaelab.sweep.grid import flag_table, parse_value

    table, tables = flag_table(), {}  # type: ignore[var-annotated]
    for flag, text in zip(words[::2], words[1::2], strict=True):
        section, field = table[flag].split(".")
        tables.setdefault(section, {})[field] = parse_value(flag, table[flag], text)
    return tables


# Runs as a user would start them (the flags given), and what the advice must (not) contain.
BRANCHES = {
    "default iwae": ({}, ["--free-bits λ", "--beta-schedule warmup --warmup-epochs N", "a lower --beta"], []),
    "named iwae": ({"train": {"objective": "iwae", "beta": 4.0}}, ["--objective elbo --free-bits λ"],
                   ["(--free-bits λ)"]),
    "beta-vae": ({"train": {"beta": 4.0}}, ["(--free-bits λ)", "(this run: 4)"], ["--objective"]),
    "free bits on": ({"train": {"objective": "elbo", "free_bits": 0.5}}, ["a --free-bits above 0.5"], []),
    "warm-up on": ({"train": {"objective": "elbo", "beta_schedule": "warmup", "warmup_epochs": 3}},
                   ["--free-bits λ"], ["--beta-schedule"]),
    "beta 0": ({"train": {"objective": "elbo", "beta": 0.0}}, [], ["--beta-schedule", "lower --beta"]),
}


@pytest.mark.parametrize("branch", sorted(BRANCHES))
def test_collapse_advice_names_only_flags_the_run_takes(branch):
    from vaelab.diagnostics import collapse_verdict
    from vaelab.settings import check_settings

    given, present, absent = BRANCHES[branch]
    config = RunConfig().with_overrides(given) if given else RunConfig()
    verdict = collapse_verdict(COLLAPSED, config)
    assert verdict is not None and verdict.collapsed
    for words in present:
        assert words in verdict.text, verdict.text
    for words in absent:
        assert words not in verdict.text, verdict.text
    groups = suggested_flags(verdict.text)
    assert len(groups) == verdict.text.count("(--") + ("a lower --beta" in verdict.text)
    for words in groups:  # the same run, with the advice's flags added: taken
        check_settings(RunConfig().with_overrides({s: {**given.get(s, {}), **overrides(words).get(s, {})}
                                                   for s in SECTIONS}))


def test_collapse_advice_of_a_saved_iwae_run_and_without_a_config(trained_run):
    """A saved run names its objective (config.json): its advice adds --objective elbo to free bits.
    Without a config the advice suits a VAE of either objective (and the autoencoder gets none)."""
    from vaelab.diagnostics import COLLAPSE_ADVICE, collapse_advice, collapse_verdict
    from vaelab.settings import check_settings

    run = ckpt.load(trained_run)
    assert run.config.train.objective == "iwae"
    assert "(--objective elbo --free-bits λ)" in collapse_advice(run.config)
    assert collapse_advice(None) == COLLAPSE_ADVICE and "--objective elbo --free-bits" in COLLAPSE_ADVICE
    with pytest.raises(ConfigError, match="--objective elbo"):  # what the advice avoids
        check_settings(RunConfig().with_overrides({"train": {"objective": "iwae", "free_bits": 0.5}}))
    for words in suggested_flags(COLLAPSE_ADVICE):  # taken by a VAE of either objective
        for objective in ("elbo", "iwae"):
            check_settings(RunConfig().with_overrides({"train": {"objective": objective,
                                                                 **overrides(words).get("train", {})}}))
    ae = RunConfig().with_overrides({"model": {"kind": "ae"}})
    assert collapse_advice(ae) == "" and collapse_verdict({"n": 10, "recon": 1.0}, ae) is None


def test_unused_layers_get_advice_the_ladder_takes():
    from vaelab.diagnostics import collapse_verdict

    metrics = {"mutual_info": 2.0, "mutual_info_se": 0.05, "active_units": 3, "latent_dim": 4,
               "kl_per_group": {"1": 2.5, "2": 0.01}, "kl_per_group_se": {"1": 0.1, "2": 0.002}}
    named_iwae = RunConfig().with_overrides({"model": {"kind": "ladder"}, "train": {"objective": "iwae"}})
    text = collapse_verdict(metrics, named_iwae).text  # type: ignore[union-attr]
    assert "(--objective elbo --free-bits λ --free-bits-group layer)" in text
    plain = RunConfig().with_overrides({"model": {"kind": "ladder"}})
    assert "(--free-bits λ --free-bits-group layer)" in collapse_verdict(metrics, plain).text  # type: ignore[union-attr]


def test_the_console_prints_the_advice_for_the_runs_config(monkeypatch):
    from vaelab.cli import console as cli_console

    screen = io.StringIO()
    monkeypatch.setattr(cli_console, "console", Console(file=screen, width=400))
    cli_console._print_collapse_verdict(COLLAPSED, RunConfig().with_overrides({"train": {"objective": "iwae"}}))
    assert "(--objective elbo --free-bits λ)" in screen.getvalue() and "(--free-bits λ)" not in screen.getvalue()


# --------------------------------------------------------------------------- a CSV with a text column


def test_a_csv_text_column_suggests_label_column(tmp_path):
    data = tmp_path / "points3d.csv"
    data.write_text("x,y,z,species\n" + "".join(f"{i},{i % 3},{i % 5},{'abc'[i % 3]}lpha\n" for i in range(60)))
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "1",
                                 "--device", "cpu", "--no-report", "--no-eval"], env=WIDE)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "column 'species' holds a value that is not a number ('alpha' on line 2)" in text
    assert "train with --label-column species" in text
    # With the label column named, another text column is named, and --label-column is not offered again.
    data.write_text("x,kind,species\n1,big,alpha\n2,small,beta\n")
    from vaelab.data.files import DataFileError, load_points

    with pytest.raises(DataFileError, match=r"column 'kind' holds .* --label-column names 'species' as the one "
                                            r"label column, or remove the column"):
        load_points(data, label_column="species")


def test_a_headerless_csv_with_text_keeps_the_plain_message(tmp_path):
    from vaelab.data.files import DataFileError, load_points

    data = tmp_path / "p.csv"
    data.write_text("1,2\n3,x\n")
    with pytest.raises(DataFileError, match="line 2 holds a value that is not a number") as err:
        load_points(data)
    assert "--label-column" not in str(err.value)  # a label column needs a header row


# --------------------------------------------------------------------------- family options


def test_plain_train_help_names_the_families_with_options_and_how_to_see_them():
    """Plain `train --help` loads no family code (start-up), so it names the families that have
    options; the list is the registry's."""
    import re
    import subprocess
    import sys

    from vaelab.cli.commands import _FAMILIES_WITH_OPTIONS
    from vaelab.models import BUILTIN_FAMILIES, option_schemas

    assert set(_FAMILIES_WITH_OPTIONS) == {n for n in option_schemas() if n in BUILTIN_FAMILIES}
    out = subprocess.run([sys.executable, "-m", "vaelab", "train", "--help"], capture_output=True, text=True,
                         env={**WIDE, "PATH": "/usr/bin:/bin"}, timeout=120).stdout
    flat = re.sub(r"\s+", " ", out)
    assert "--model NAME --help" in flat and all(name in flat for name in _FAMILIES_WITH_OPTIONS)


@pytest.mark.parametrize("family, flag", [("planar", "--planar-flows"), ("vamp", "--vamp-components"),
                                          ("ladder", "--ladder-layers")])
def test_train_help_with_a_model_lists_that_familys_options(family, flag):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vaelab", "train", "--model", family, "--help"],
                         capture_output=True, text=True, env={**WIDE, "PATH": "/usr/bin:/bin"}, timeout=120).stdout
    assert flag in out and f"--model {family}" in out
    others = {"planar": "--iaf-flows", "vamp": "--mog-components", "ladder": "--planar-flows"}[family]
    assert others not in out  # only the family asked about


# --------------------------------------------------------------------------- the commands messages print


def test_printed_commands_work_where_vaelab_is_not_on_path(tmp_path, monkeypatch):
    """Issue 21: after the quick start (no activated .venv), the resume line printed on Ctrl-C
    said `vaelab train ...`, 'command not found'. It names the program as it was started."""
    import sys

    from vaelab.cli.common import vaelab_command

    program = tmp_path / "venv" / "bin" / "vaelab"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(program), "train"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # not activated
    assert vaelab_command() == str(program)
    monkeypatch.setenv("PATH", f"{program.parent}:/usr/bin:/bin")  # activated: the bare name finds it
    assert vaelab_command() == "vaelab"
    monkeypatch.setattr(sys, "argv", ["/some/where/vaelab/__main__.py", "train"])  # python -m vaelab
    assert vaelab_command().endswith(" -m vaelab")
    monkeypatch.setattr(sys, "argv", ["pytest"])  # in-process: the documented name
    assert vaelab_command() == "vaelab"


def test_radius_tracking_table_labels_means_and_samples():
    """The console printed the decoder means' radii under "mean ‖x‖ of samples"; both are now
    printed, each under its own name (runs evaluated before keep the means' columns alone)."""
    from vaelab.cli import console as console_module

    track = {"requested": [1.0, 2.0], "mean_radius": [1.01, 1.98], "std_radius": [0.02, 0.03],
             "mean_abs_error": 0.015, "sample_mean_radius": [1.07, 2.05], "sample_std_radius": [0.31, 0.33],
             "sample_mean_abs_error": 0.06}
    with console_module.console.capture() as cap:
        console_module._print_condition_metrics({"radius_tracking": track})
    text = cap.get()
    assert "means: mean ‖x‖" in text and "samples: mean ‖x‖" in text and "0.310" in text
    assert "decoder means 0.0150, samples 0.0600" in text
    old = {k: v for k, v in track.items() if not k.startswith("sample_")}
    with console_module.console.capture() as cap:
        console_module._print_condition_metrics({"radius_tracking": old})
    assert "samples" not in cap.get().replace("radius_tracking", "")


def test_the_likelihood_help_lists_every_registered_likelihood():
    import re

    from vaelab.cli.commands import LIKELIHOOD_HELP
    from vaelab.likelihoods import LIKELIHOODS

    text = LIKELIHOOD_HELP.split(": ", 1)[1]
    while "(" in text:  # drop the words in parentheses, nested ones first
        text = re.sub(r"\([^()]*\)", "", text)
    named = [name.strip() for name in text.split(",")]
    assert sorted(named) == sorted(LIKELIHOODS)
