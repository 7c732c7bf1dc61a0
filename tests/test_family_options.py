"""A family's own options, declared once (``options = MixturePriorOptions``) and derived everywhere:
the ``[model.NAME]`` TOML table, config.json, ``--NAME-FIELD`` flags and their help, the sweep's
flag table, the reproduce command, and the refusals (another family, an unknown key, an unknown
family). The family is the test-only MixturePriorVAE of tests/models/families.py, registered at
runtime as ``mogvae`` (a name no built-in family has: ``mog`` is the built-in mixture prior).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import invoke, parsed_train_config, tiny_config
from models.families import MixturePriorOptions, MixturePriorVAE
from vaelab.config import ConfigError, RunConfig
from vaelab.models import FAMILIES, build_model, family_options, option_schemas, register_family
from vaelab.settings import check_settings

NAME = "mogvae"
# A tiny run of the CLI: one epoch of 200 ring points, no evaluation or report.
TINY = ["--data", "ring", "--n-train", "200", "--n-test", "100", "--hidden", "16,16", "--epochs", "1",
        "--batch-size", "64", "--device", "cpu", "--no-eval", "--no-report"]
TOML_TINY = """
[data]
name = "ring"
n_train = 256
n_test = 128
[model]
kind = "mogvae"
hidden = [16, 16]
[model.mogvae]
components = 3
spread = 2
[train]
epochs = 2
batch_size = 64
checkpoint_every = 1
diversity_samples = 64
"""


@pytest.fixture(scope="module", autouse=True)
def mixture_family() -> Iterator[None]:
    """Register the test family for this module, and take it out again after it."""
    register_family(NAME, MixturePriorVAE)
    yield
    FAMILIES.pop(NAME, None)


def text(result) -> str:
    """The output as one line: rich wraps it at the terminal's width."""
    return " ".join(result.output.split())


# ----- the TOML table, config.json, with_overrides -----

def test_a_toml_table_round_trips_through_a_saved_run(tmp_path: Path) -> None:
    from vaelab import checkpoint as ckpt
    from vaelab.train import train_run

    toml = tmp_path / "run.toml"
    toml.write_text(TOML_TINY)
    config = RunConfig.from_toml(toml)
    assert config.model.family_tables == {NAME: {"components": 3, "spread": 2}}
    assert "model.mogvae.components" in config.user_settings()
    train_run(config, tmp_path / "run")

    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"][NAME] == {"components": 3, "spread": 2}  # the table as given, in config.json
    run = ckpt.load(tmp_path / "run")
    assert run.config.model.family_tables == config.model.family_tables
    assert run.config.model_dump() == config.model_dump()
    options = family_options(run.config.model)
    assert options == MixturePriorOptions(components=3, spread=2.0, learn_weights=True)  # defaults filled in
    assert tuple(run.model.prior_means.shape) == (3, 2)  # the loaded model was built with them


def test_overrides_lay_options_over_the_table_and_record_them_as_given() -> None:
    config = RunConfig.from_dict({"model": {"kind": NAME, NAME: {"components": 3}}})
    over = config.with_overrides({"model": {NAME: {"spread": 0.5}, "latent_dim": 3}})
    assert over.model.family_tables == {NAME: {"components": 3, "spread": 0.5}}
    assert {"model.mogvae.components", "model.mogvae.spread", "model.latent_dim"} <= set(over.user_settings())
    assert "model.mogvae.learn_weights" not in over.user_settings()  # a default is not a given setting
    assert RunConfig.from_dict(json.loads(over.to_json())) == over


def test_setting_value_reads_family_options_with_their_defaults() -> None:
    from vaelab.settings import setting_value

    config = RunConfig.from_dict({"model": {"kind": NAME, NAME: {"components": 3}}})
    assert setting_value(config, "model.mogvae.components") == 3  # as given
    assert setting_value(config, "model.mogvae.spread") == 1.5  # the family's default
    assert setting_value(config, "model.hidden") == config.model.hidden
    assert setting_value(RunConfig(), "model.mogvae.spread") is None  # not a mogvae run: no part in it


def test_train_run_resumed_with_another_family_option_is_refused(tmp_path: Path) -> None:
    from vaelab.train import train_run

    toml = tmp_path / "run.toml"
    toml.write_text(TOML_TINY)
    config = RunConfig.from_toml(toml)
    train_run(config, tmp_path / "run")
    changed = RunConfig().with_overrides({"model": {NAME: {"components": 4}}})
    with pytest.raises(ConfigError, match=r"cannot change:\n  model.mogvae.components \(--mogvae-components\): "
                                          r"the run has 3"):
        train_run(changed, tmp_path / "run", resume=True)


def test_a_family_reads_its_options_validated_with_defaults() -> None:
    config = RunConfig.from_dict({"model": {"kind": NAME, NAME: {"components": 4, "learn_weights": False}}})
    model = build_model(config.model, x_dim=2, seed=0)
    assert isinstance(model, MixturePriorVAE)
    assert model.prior_logits.shape == (4,) and not model.prior_logits.requires_grad  # π fixed: a buffer
    assert config.model.family_options(MixturePriorOptions).spread == 1.5


def test_compare_names_the_family_options_that_differ() -> None:
    from types import SimpleNamespace

    from vaelab.compare import config_differences

    models = [{"kind": NAME, NAME: {"components": 3, "spread": 0.5}}, {"kind": NAME, NAME: {"components": 4,
              "spread": 0.5}}, {"kind": NAME}]  # the last run takes the defaults
    runs = [SimpleNamespace(config=RunConfig.from_dict({"model": model})) for model in models]
    assert config_differences(runs) == [  # type: ignore[arg-type]
        ("model.mogvae.components", [3, 4, None]), ("model.mogvae.spread", [0.5, 0.5, None])]
    assert config_differences(runs[:2]) == [("model.mogvae.components", [3, 4])]  # type: ignore[arg-type]


# ----- refusals: another family, an unknown key, an unknown family, a bad value -----

@pytest.mark.parametrize(("model", "message"), [
    ({NAME: {"components": 3}},  # the run's family is vae
     "model.mogvae.components (--mogvae-components) does not apply here: it is an option of the mogvae family: "
     "it applies only to --model mogvae, and the model is vae; add --model mogvae or drop it"),
    ({"kind": NAME, NAME: {"compnents": 3}},
     "model.mogvae.compnents (--mogvae-compnents): unknown option of the mogvae family; [model.mogvae] takes "
     "components, spread, learn_weights"),
    ({"kind": NAME, "mogvea": {"components": 3}},
     "model.mogvea ([model.mogvea] or --mogvea-* flags): unknown model family 'mogvea'; the families with "
     "options are: {with_options} (all families: {families})"),
    ({"kind": NAME, "vae": {"components": 3}},
     "the vae family (VAE) has no options; the families with options are: {with_options}"),
    ({"kind": NAME, NAME: {"components": 0}},
     "model.mogvae.components (--mogvae-components): Input should be greater than 0 (got 0)"),
    ({"kind": NAME, NAME: {"spread": "2"}},  # strict, like every section: no string for a number
     "model.mogvae.spread (--mogvae-spread): Input should be a valid number"),
])
def test_a_table_that_cannot_apply_is_refused(model: dict, message: str) -> None:
    config = RunConfig.from_dict({"model": model})  # a leaf config cannot know the families
    with pytest.raises(ConfigError) as err:
        check_settings(config)
    # the lists of families are the registry's: the built-in ones, then mogvae (registered here)
    assert message.format(with_options=", ".join(option_schemas()), families=", ".join(FAMILIES)) in str(err.value)
    assert "mogvae" in ", ".join(option_schemas())
    with pytest.raises(ConfigError):  # nor is such a model built
        build_model(config.model, x_dim=2)


def test_a_scalar_under_model_is_an_unknown_option_not_a_table() -> None:
    with pytest.raises(ConfigError, match=r"model.mogvae: unknown option; \[model\] takes kind, .*\[model.NAME\]"):
        RunConfig.from_dict({"model": {NAME: 3}})


def test_a_family_cannot_take_the_name_of_a_model_setting() -> None:
    from vaelab.errors import InputError

    with pytest.raises(InputError, match="cannot be named 'hidden'"):
        register_family("hidden", MixturePriorVAE)
    assert "hidden" not in FAMILIES


# ----- vaelab train: flags parsed with the option's type, help, refusals -----

def test_train_flags_set_the_options_with_their_types(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nkind = \"mogvae\"\n[model.mogvae]\nspread = 3.0\ncomponents = 5\n")
    out = tmp_path / "run"
    result = invoke("train", *TINY, "--config", toml, "--mogvae-components", "3", "--mogvae-learn-weights=false",
                    "--out", out)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "config.json").read_text())["model"][NAME]
    # the flag replaces the table's components, the table's spread stays: flags over --config
    assert table == {"spread": 3.0, "components": 3, "learn_weights": False}
    assert type(table["components"]) is int and type(table["learn_weights"]) is bool


@pytest.mark.parametrize(("args", "message"), [
    (["--mogvae-components", "3"], "applies only to --model mogvae, and the model is vae"),
    (["--model", NAME, "--mogvae-components", "three"], "--mogvae-components: 'three' is not an integer"),
    (["--model", NAME, "--mogvae-learn-weights", "maybe"], "--mogvae-learn-weights: 'maybe' is not true or false"),
    (["--model", NAME, "--mogvae-compnents", "3"], "No such option: --mogvae-compnents (Possible options: "
                                                   "--mogvae-components,"),
    # the closest flag first (the built-in --mog-components and --vamp-components are close too)
    (["--model", NAME, "--mogvea-components", "3"], "No such option: --mogvea-components (Possible options: "
                                                    "--mogvae-components,"),
    (["--model", NAME, "--mogvae-components"], "option --mogvae-components requires a value"),
    (["--model", NAME, "--mogvae-spread", "1", "--mogvae-spread", "2"], "option --mogvae-spread is given twice"),
    (["--no-such-flag", "1"], "No such option: --no-such-flag"),
    (["stray"], "unexpected extra argument 'stray'"),
])
def test_train_refuses_a_flag_that_cannot_apply(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("train", *TINY, *args, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert message in text(result)
    assert not (tmp_path / "r").exists()


def test_resume_refuses_another_family_option_and_takes_the_same(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(TOML_TINY)
    trained = invoke("train", "--config", toml, "--out", tmp_path / "r", "--no-eval", "--no-report")
    assert trained.exit_code == 0, text(trained)
    result = invoke("train", "--out", tmp_path / "r", "--resume", "--mogvae-components", "4")
    assert result.exit_code == 2
    assert "these settings cannot change:" in text(result)
    assert "model.mogvae.components (--mogvae-components): the run has 3" in text(result)
    same = invoke("train", "--out", tmp_path / "r", "--resume", "--mogvae-components", "3", "--epochs", "3",
                  "--no-eval", "--no-report")
    assert same.exit_code == 0, text(same)


def test_train_help_lists_the_options_of_each_family() -> None:
    result = invoke("train", "--help")
    assert result.exit_code == 0
    help_text = text(result)
    assert "--model mogvae (MixturePriorVAE):" in help_text
    for flag, description in [("--mogvae-components INTEGER", "number K of mixture components of p(z) (default 2)"),
                              ("--mogvae-spread FLOAT", "initial means of the components"),
                              ("--mogvae-learn-weights true|false", "learn the weights π")]:
        assert flag in help_text and description in help_text
    assert "[model.NAME]" in help_text  # escaped, not read as rich markup
    FAMILIES.pop(NAME)
    try:  # the list comes from the registry: without the family, no flags of it
        assert "--mogvae-components" not in text(invoke("train", "--help"))
    finally:
        register_family(NAME, MixturePriorVAE)


# ----- vaelab sweep: the one flag table -----

def test_the_sweep_flag_table_derives_the_family_flags() -> None:
    from vaelab.sweep.grid import expand, flag_table, make_grid, parse_flags, sweep_table

    table = flag_table()
    assert {f: d for f, d in table.items() if d.startswith("model.mogvae.")} == {
        "--mogvae-components": "model.mogvae.components", "--mogvae-spread": "model.mogvae.spread",
        "--mogvae-learn-weights": "model.mogvae.learn_weights"}
    lists = parse_flags(["--model", NAME, "--mogvae-components", "2,3", "--mogvae-spread", "0.5",
                         "--mogvae-learn-weights", "true,false"])
    assert lists["model.mogvae.components"] == [2, 3] and lists["model.mogvae.learn_weights"] == [True, False]
    base, grid = make_grid(tiny_config(), lists)
    assert base.model.family_tables == {NAME: {"spread": 0.5}}  # a single value applies to every member
    members = expand(base, grid)
    assert [m.config.model.family_tables[NAME] for m in members] == [
        {"spread": 0.5, "components": c, "learn_weights": w} for c in (2, 3) for w in (True, False)]
    assert members[0].name == "mogvae.components=2,mogvae.learn_weights=True"
    # the [sweep] table of a --config file takes them too
    toml_lists, _ = sweep_table({"model": {NAME: {"components": [2, 4]}}})
    assert toml_lists == {"model.mogvae.components": [2, 4]}


def test_a_sweep_member_of_another_family_is_refused() -> None:
    from vaelab.sweep.grid import GridError, expand, make_grid, parse_flags

    base, grid = make_grid(tiny_config(), parse_flags(["--model", f"vae,{NAME}", "--mogvae-components", "3"]))
    with pytest.raises(GridError, match=r"(?s)member kind=vae is refused: .*applies only to --model mogvae"):
        expand(base, grid)


@pytest.mark.parametrize(("args", "message"), [
    (["--mogvae-components", "2,x"], "--mogvae-components: 'x' is not an integer"),
    (["--mogvae-components", "2,3"], "applies only to --model mogvae"),
])
def test_vaelab_sweep_takes_family_flags(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("sweep", "--out", tmp_path / "s", "--data", "ring", "--device", "cpu", *args)
    assert result.exit_code == 2
    assert message in text(result)
    assert not (tmp_path / "s").exists()


# ----- reproduce: the command and the TOML file give the options back -----

def test_reproduce_gives_the_family_options_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vaelab.reproduce import reproduce_command, reproduce_toml

    config = RunConfig.from_dict({  # settings that all have flags: the command needs no TOML file
        "data": {"name": "ring", "n_train": 256},
        "model": {"kind": NAME, "hidden": [16, 16], NAME: {"components": 3, "spread": 0.25, "learn_weights": False}},
        "train": {"epochs": 2},
    })
    command, needs_toml = reproduce_command(config, tmp_path / "again")
    assert not needs_toml
    assert "--mogvae-components 3 --mogvae-spread 0.25 --mogvae-learn-weights false" in command
    again = parsed_train_config(monkeypatch, command)
    assert again.model.family_tables == config.model.family_tables
    assert again.model_dump() == config.model_dump()

    toml = tmp_path / "again.toml"
    toml.write_text(reproduce_toml(config))
    assert "[model.mogvae]" in toml.read_text()
    assert RunConfig.from_toml(toml).model.family_tables == config.model.family_tables


def test_assigning_a_model_setting_adds_no_family_table() -> None:
    """Found by hand: with the extras typed, pydantic's assignment validation kept its own
    ``__pydantic_extra__`` as a [model.__pydantic_extra__] table, and check_settings refused the
    README's ``cfg.model.latent_dim = 2``."""
    config = RunConfig()
    config.model.latent_dim = 2
    assert config.model.family_tables == {}
    check_settings(config)
