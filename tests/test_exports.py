"""What ``import vaelab`` offers (issue 21, review newcomer-0.2 §2.4, §2.5): every public name
resolves, tab completion lists only them, and the figure functions are among them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import vaelab

PLOTS = Path(vaelab.__file__).parent / "plots"
# Names the review found in `dir(vaelab)`: imports of the module itself, not vaelab's API.
HELPERS = ("Any", "sys", "types", "TYPE_CHECKING", "logging", "import_module", "annotations")


def _fresh(code: str) -> object:
    """``result`` of ``code`` run in a new interpreter (this session has imported much of vaelab)."""
    proc = subprocess.run([sys.executable, "-c", code + "\nimport json\nprint(json.dumps(result))"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plot_functions() -> dict[str, list[str]]:
    """{module: its public plot_* functions}, read from the source of every vaelab.plots module."""
    found = {}
    for path in sorted(PLOTS.glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("plot_")]
        if names:
            found[f"vaelab.plots.{path.stem}"] = names
    return found


def test_every_public_name_resolves() -> None:
    assert len(vaelab.__all__) == len(set(vaelab.__all__))
    for name in vaelab.__all__:
        assert getattr(vaelab, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from vaelab import *", namespace)
    assert set(vaelab.__all__) <= set(namespace)


def test_dir_lists_the_public_names_only() -> None:
    listed = dir(vaelab)
    assert set(vaelab.__all__) <= set(listed)
    assert [n for n in listed if n.startswith("_") and n != "__version__"] == []
    assert not set(HELPERS) & set(listed)


def test_the_module_namespace_holds_no_helper_imports() -> None:
    names = _fresh("import vaelab\nresult = sorted(vars(vaelab))")
    assert isinstance(names, list)
    assert not set(HELPERS) & set(names), names
    assert [n for n in names if not n.startswith("_")] == []  # the API itself is loaded on first use
    listed = _fresh("import vaelab\nresult = dir(vaelab)")
    assert isinstance(listed, list) and not set(HELPERS) & set(listed)


def test_every_plot_function_is_exported() -> None:
    import importlib

    exported = {id(getattr(vaelab, name)) for name in vaelab.__all__}
    for module, names in _plot_functions().items():
        for name in names:
            fn = getattr(importlib.import_module(module), name)
            assert id(fn) in exported, f"{module}.{name} is not exported from vaelab (add it to _EXPORTS and __all__)"
    assert vaelab.plot_samples.__module__ == "vaelab.plots.data_space"  # the 2-D figures keep the short names
    assert vaelab.plot_reconstructions.__module__ == "vaelab.plots.data_space"
    assert vaelab.plot_image_reconstructions.__module__ == "vaelab.plots.images"
    assert {"plot_samples", "plot_latent_grid", "plot_training_curves", "plot_density"} <= set(dir(vaelab))


def test_registry_comparison_and_families_are_exported() -> None:
    import vaelab.compare
    import vaelab.models
    import vaelab.plots
    from vaelab.plots.common import PlotContext

    assert vaelab.render is vaelab.plots.render
    assert vaelab.PlotContext is PlotContext
    assert vaelab.write_comparison is vaelab.compare.write_comparison
    assert vaelab.register_family is vaelab.models.register_family


def test_plots_is_reachable_after_import_vaelab_alone() -> None:
    got = _fresh("import sys, vaelab\nbefore = 'matplotlib' in sys.modules or 'torch' in sys.modules\n"
                 "result = [before, 'plots' in dir(vaelab), vaelab.plots.__name__, callable(vaelab.plots.render)]")
    assert got == [False, True, "vaelab.plots", True]
