"""The import graph: vaelab.config is a leaf, and every name is checked against its one registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vaelab
from vaelab.config import ConfigError, RunConfig
from vaelab.settings import check_names, check_settings

SRC = Path(vaelab.__file__).parent


def vaelab_imports(path: Path) -> set[str]:
    """The vaelab modules a source file imports (at any depth of the file, lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vaelab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import is an import from the package
                found.add("." * node.level + (node.module or ""))
            elif node.module and node.module.split(".")[0] == "vaelab":
                found.add(node.module)
    return found


def test_config_imports_nothing_from_the_package_but_its_error_types() -> None:
    # errors.py holds the exception classes every module raises; it imports nothing itself, so
    # config.py stays a leaf of the import graph.
    assert vaelab_imports(SRC / "config.py") <= {"vaelab.errors"}
    assert vaelab_imports(SRC / "errors.py") == set()


def test_the_import_scan_sees_lazy_imports(tmp_path: Path) -> None:
    # The check above could pass by not seeing imports inside functions: it must see them.
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from vaelab.models import build_model\n    import vaelab.data.registry\n")
    assert vaelab_imports(f) == {"vaelab.models", "vaelab.data.registry"}


@pytest.mark.parametrize(("section", "field", "flag", "choice"), [
    ("data", "name", "--data", "radial_gmm"),
    ("model", "kind", "--model", "vae"),
    ("model", "net", "--net", "conv"),
    ("model", "activation", "--activation", "tanh"),
    ("model", "likelihood", "--likelihood", "bernoulli"),
    ("train", "objective", "--objective", "iwae"),
])
def test_an_unknown_name_is_refused_naming_the_setting_and_the_registry_choices(
    section: str, field: str, flag: str, choice: str
) -> None:
    config = RunConfig.from_dict({section: {field: "nonesuch"}})  # a leaf config cannot know the names
    for check in (check_names, check_settings):
        with pytest.raises(ConfigError, match=rf"{section}.{field} \({flag}\): unknown .* 'nonesuch'; "
                                              rf"choose one of: .*{choice}"):
            check(config)
