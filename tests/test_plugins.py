"""Model families from outside vaelab (issue 21): found through --plugin, VAELAB_PLUGINS and the
``vaelab.families`` entry points, recorded in the runs they train, and loaded back with them.

The command line is exercised for real: ``python -m vaelab ...`` in a fresh process, run from an
empty folder (so nothing is importable by accident), with the family in a temporary folder that
is on no path unless a test puts it there. An installed distribution is faked the way
importlib.metadata finds one: a ``*.dist-info`` folder with ``entry_points.txt`` on sys.path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vaelab.errors import InputError

# A family as a user writes it: a VAE whose prior is a learned Gaussian mixture, with one option.
FAMILY_CODE = '''
"""The VAE with a learned K-component Gaussian-mixture prior, written outside vaelab."""
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaelab.config import FamilyOptions
from vaelab.models import VAE, register_family


class MixPriorOptions(FamilyOptions):
    components: int = Field(4, ge=1, description="number K of mixture components of p(z)")


class MixPriorVAE(VAE):
    options = MixPriorOptions

    def __init__(self, config, x_dim, cond_dim=0, cond_embed=()):
        super().__init__(config, x_dim, cond_dim, cond_embed)
        k, d = config.family_options(MixPriorOptions).components, config.latent_dim
        self.prior_logits = nn.Parameter(torch.zeros(k))
        self.prior_means = nn.Parameter(torch.linspace(-1.0, 1.0, k)[:, None].repeat(1, d))
        self.prior_scale_raw = nn.Parameter(torch.zeros(k, d))

    def prior(self, c=None):
        components = Independent(Normal(self.prior_means, F.softplus(self.prior_scale_raw) + 1e-3), 1)
        return MixtureSameFamily(Categorical(logits=self.prior_logits), components)
'''

TRAIN = ["train", "--data", "moons", "--n-train", "128", "--n-test", "64", "--epochs", "1", "--batch-size", "64",
         "--hidden", "8,8", "--eval-k", "4", "--no-report", "--device", "cpu"]


def _write_module(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(code)
    return path


def _fake_distribution(site: Path, dist: str, entry_points: str) -> None:
    """What `pip install` leaves for importlib.metadata: NAME-VERSION.dist-info with its entry points."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``mixfam.py``, which registers the family ``mixprior`` when imported."""
    folder = tmp_path_factory.mktemp("plugins")
    _write_module(folder, "mixfam", FAMILY_CODE + '\nregister_family("mixprior", MixPriorVAE)\n')
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The empty folder every command runs in (`python -m` puts the cwd on sys.path)."""
    return tmp_path_factory.mktemp("work")


def vaelab(args: list[str], cwd: Path, pythonpath: list[Path] = (), plugins: str | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m vaelab ARGS`` in a fresh process, with exactly the given PYTHONPATH and VAELAB_PLUGINS."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VAELAB_PLUGINS", "VAELAB_DEBUG")}
    env["COLUMNS"] = "200"
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    if plugins is not None:
        env["VAELAB_PLUGINS"] = plugins
    return subprocess.run([sys.executable, "-m", "vaelab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _recorded_family(run: Path) -> str | None:
    """The family source the run's weights record (the safetensors header metadata)."""
    raw = (run / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]).get("__metadata__", {}).get("family")


# -- the bug: a family of the user's own was unknown to the command line ------------------------


def test_without_a_plugin_the_family_is_unknown_and_the_error_says_how_to_load_one(plugin_dir, workdir):
    # mixfam is importable (PYTHONPATH), but nothing imports it: the error says how to.
    out = vaelab([*TRAIN, "--model", "mixprior", "--out", str(workdir / "none")], workdir, [plugin_dir])
    assert out.returncode == 2, out.stdout + out.stderr
    assert "unknown model family 'mixprior'" in out.stderr
    assert "--plugin" in out.stderr and "VAELAB_PLUGINS" in out.stderr and "vaelab.families" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (workdir / "none").exists()


@pytest.fixture(scope="module")
def plugin_run(plugin_dir: Path, workdir: Path) -> Path:
    """A run of the outside family trained with `vaelab --plugin mixfam train --model mixprior`."""
    run = workdir / "mp"
    out = vaelab(["--plugin", "mixfam", *TRAIN, "--model", "mixprior", "--mixprior-components", "3",
                  "--out", str(run)], workdir, [plugin_dir])
    assert out.returncode == 0, out.stdout + out.stderr
    return run


def test_plugin_option_trains_the_family_with_its_options_and_records_its_module(plugin_run):
    config = json.loads((plugin_run / "config.json").read_text())
    assert config["model"]["kind"] == "mixprior"
    assert config["model"]["mixprior"] == {"components": 3}
    assert _recorded_family(plugin_run) == "mixfam:MixPriorVAE"


def test_eval_and_report_import_the_recorded_module_by_themselves(plugin_run, plugin_dir, workdir):
    out = vaelab(["eval", str(plugin_run), "--k", "4"], workdir, [plugin_dir])  # no --plugin
    assert out.returncode == 0, out.stdout + out.stderr
    assert "IWAE NLL" in out.stdout and "Monte Carlo" in out.stdout  # a mixture prior: KL by Monte Carlo
    out = vaelab(["report", str(plugin_run), "--figures", "samples,training_curves"], workdir, [plugin_dir])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mixprior" in (plugin_run / "report.html").read_text()


def test_a_run_whose_module_cannot_be_imported_names_it_and_the_plugin_to_give(plugin_run, workdir):
    out = vaelab(["eval", str(plugin_run), "--k", "4"], workdir)  # mixfam is on no path here
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    err = " ".join(out.stderr.split())
    assert "'mixprior'" in err and "module 'mixfam'" in err and "mixfam:MixPriorVAE" in err
    assert "--plugin" in err and "PYTHONPATH" in err and "pip install" in err


def test_a_plugin_given_as_a_file_path_loads_the_run(plugin_run, plugin_dir, workdir):
    out = vaelab(["--plugin", str(plugin_dir / "mixfam.py"), "eval", str(plugin_run), "--k", "4"], workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "IWAE NLL" in out.stdout


def test_train_help_lists_the_options_of_a_plugin_family(plugin_dir, workdir):
    out = vaelab(["--plugin", "mixfam", "train", "--help"], workdir, [plugin_dir])
    assert out.returncode == 0, out.stderr
    assert "--mixprior-components" in out.stdout and "MixPriorVAE" in out.stdout


def test_vaelab_plugins_environment_variable_trains_the_family(plugin_dir, workdir):
    run = workdir / "env"
    out = vaelab([*TRAIN, "--model", "mixprior", "--out", str(run)], workdir, [plugin_dir], plugins=" mixfam ,")
    assert out.returncode == 0, out.stdout + out.stderr
    assert _recorded_family(run) == "mixfam:MixPriorVAE"


# -- entry points: an installed distribution ----------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake site folder with two distributions: one providing ``mixprior`` (a class, not registered
    by its module), one whose family module fails on import."""
    folder = tmp_path_factory.mktemp("site")
    _write_module(folder, "mixfam_ep", FAMILY_CODE)
    _write_module(folder, "brokenfam", "import torch\nraise RuntimeError('the GPU kernels are not built')\n")
    _fake_distribution(folder, "mixfam-ep", "[vaelab.families]\nmixprior = mixfam_ep:MixPriorVAE\n")
    _fake_distribution(folder, "broken-fam", "[vaelab.families]\nbroken = brokenfam:BrokenVAE\n")
    return folder


def test_an_entry_point_family_trains_and_its_run_loads_without_any_option(site, workdir):
    run = workdir / "ep"
    out = vaelab([*TRAIN, "--model", "mixprior", "--out", str(run)], workdir, [site])
    assert out.returncode == 0, out.stdout + out.stderr
    assert _recorded_family(run) == "mixfam_ep:MixPriorVAE"
    out = vaelab(["eval", str(run), "--k", "4"], workdir, [site])
    assert out.returncode == 0, out.stdout + out.stderr


def test_entry_points_are_loaded_only_when_the_registry_is_first_read_and_a_broken_one_spares_the_others(
        site, workdir):
    code = textwrap.dedent("""
        import sys
        from vaelab.errors import InputError
        import vaelab.models as m
        before = "mixfam_ep" in sys.modules
        vae, mix = m.family("vae").__name__, m.family("mixprior").__name__
        try:
            m.family("broken")
            broken = None
        except InputError as err:
            broken = str(err)
        print(before, "mixfam_ep" in sys.modules, vae, mix, "broken" in m.FAMILIES, sep="|")
        print(broken)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("VAELAB_PLUGINS",)}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    flags, message = out.stdout.strip().split("\n", 1)
    assert flags == "False|True|VAE|MixPriorVAE|False"
    assert "broken-fam" in message and "brokenfam:BrokenVAE" in message  # the distribution and entry point
    assert "RuntimeError: the GPU kernels are not built" in message  # the cause
    assert "brokenfam.py" in message  # where it was raised


def test_a_broken_entry_point_is_a_clear_error_on_the_command_line(site, workdir):
    out = vaelab([*TRAIN, "--model", "broken", "--out", str(workdir / "broken")], workdir, [site])
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    err = " ".join(out.stderr.split())
    assert "broken-fam" in err and "RuntimeError: the GPU kernels are not built" in err


# -- modules that cannot be imported ------------------------------------------------------------


def test_a_plugin_that_is_not_importable_says_how_to_make_it_importable(workdir):
    out = vaelab(["--plugin", "nosuch_family_pkg.models", "datasets"], workdir)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    err = " ".join(out.stderr.split())
    assert "nosuch_family_pkg.models" in err and "PYTHONPATH" in err and "pip install -e" in err


def test_a_plugin_that_fails_on_import_names_the_module_and_the_cause(tmp_path, workdir):
    _write_module(tmp_path, "failing_fam", "x = 1\nraise ValueError('components must be positive')\n")
    out = vaelab(["--plugin", "failing_fam", "datasets"], workdir, [tmp_path], )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    err = " ".join(out.stderr.split())
    assert "failing_fam" in err and "ValueError: components must be positive" in err and "line 2" in err
    out = vaelab(["datasets"], workdir, [tmp_path], plugins="failing_fam")  # the same through the variable
    assert out.returncode == 2 and "VAELAB_PLUGINS" in out.stderr and "ValueError" in out.stderr


# -- in this process: the library side ----------------------------------------------------------


@pytest.fixture
def mixfam(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """mixfam importable in this process; afterwards its family and module are gone again."""
    from vaelab.models import FAMILIES

    monkeypatch.syspath_prepend(str(plugin_dir))
    yield
    FAMILIES.pop("mixprior", None)
    sys.modules.pop("mixfam", None)


def test_a_built_in_family_records_no_module_and_an_outside_one_its_class(mixfam, tmp_path):
    from helpers import tiny_config
    from vaelab import checkpoint as ckpt
    from vaelab.models import build_model, family_source

    assert family_source("vae") is None and family_source("mog") is None
    vae = build_model(tiny_config().model, 2, seed=0)
    ckpt.save(tmp_path / "vae", vae, tiny_config())
    assert _recorded_family(tmp_path / "vae") is None  # built-in runs stay as they were

    import mixfam as module  # registers mixprior

    assert family_source("mixprior") == "mixfam:MixPriorVAE"
    cfg = tiny_config(model={"kind": "mixprior"})
    ckpt.save(tmp_path / "mp", build_model(cfg.model, 2, seed=0), cfg)
    assert _recorded_family(tmp_path / "mp") == "mixfam:MixPriorVAE"
    assert type(ckpt.load(tmp_path / "mp").model) is module.MixPriorVAE


def test_loading_a_run_imports_its_recorded_module(mixfam, tmp_path):
    import mixfam as module

    from helpers import tiny_config
    from vaelab import checkpoint as ckpt
    from vaelab.models import FAMILIES, build_model

    cfg = tiny_config(model={"kind": "mixprior"})
    ckpt.save(tmp_path / "mp", build_model(cfg.model, 2, seed=0), cfg)
    FAMILIES.pop("mixprior")
    sys.modules.pop("mixfam")  # as in a fresh process: neither registered nor imported
    loaded = ckpt.load(tmp_path / "mp")
    assert "mixprior" in FAMILIES and type(loaded.model).__name__ == "MixPriorVAE"
    assert type(loaded.model) is not module.MixPriorVAE  # the module was imported again, by the load


def test_a_run_of_a_family_defined_in_a_script_says_so(mixfam, tmp_path):
    import mixfam as module

    from helpers import tiny_config
    from vaelab import checkpoint as ckpt
    from vaelab.models import FAMILIES, build_model

    cfg = tiny_config(model={"kind": "mixprior"})
    model = build_model(cfg.model, 2, seed=0)
    real_module = module.MixPriorVAE.__module__
    module.MixPriorVAE.__module__ = "__main__"  # as if defined in a notebook cell
    try:
        ckpt.save(tmp_path / "mp", model, cfg)
    finally:
        module.MixPriorVAE.__module__ = real_module
    FAMILIES.pop("mixprior")
    with pytest.raises(InputError, match=r"'mixprior'.*script or notebook.*register_family"):
        ckpt.load(tmp_path / "mp")


def test_import_plugin_refuses_a_file_that_does_not_exist(tmp_path):
    from vaelab.plugins import PluginError, import_plugin

    with pytest.raises(PluginError, match=r"no such file"):
        import_plugin(str(tmp_path / "nothere.py"))


def test_plugins_from_the_environment_variable(monkeypatch):
    from vaelab.plugins import env_plugins

    monkeypatch.setenv("VAELAB_PLUGINS", " a.b, ,./c.py,")
    assert env_plugins() == ["a.b", "./c.py"]
    monkeypatch.delenv("VAELAB_PLUGINS")
    assert env_plugins() == []
