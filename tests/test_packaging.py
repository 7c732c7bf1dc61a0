"""pyproject.toml declares exactly what the package imports, and ships only what exists."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "vaelab"
# import name -> distribution name, where they differ
DIST_OF = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist_name(requirement: str) -> str:
    for sep in ("<", ">", "=", "!", "~", "[", ";", " "):
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()


def _third_party_imports() -> set[str]:
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "vaelab" and top not in sys.stdlib_module_names:
                    found.add(DIST_OF.get(top, top).lower())
    return found


def test_every_import_is_declared_and_every_dependency_is_used():
    declared = {_dist_name(r) for r in _pyproject()["project"]["dependencies"]}
    imported = _third_party_imports()
    assert imported - declared == set(), "imported but not declared in pyproject dependencies"
    assert declared - imported == set(), "declared in pyproject dependencies but never imported"


def test_package_data_and_license_exist():
    project = _pyproject()
    for pattern in project["tool"]["setuptools"]["package-data"]["vaelab"]:
        assert list(SRC.glob(pattern)), f"package-data pattern {pattern!r} matches no file"
    for name in project["project"]["license-files"]:
        assert (ROOT / name).is_file()
    assert "MIT License" in (ROOT / "LICENSE").read_text()
