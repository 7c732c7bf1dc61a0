"""The import graph: vaelab.config is a leaf, no module imports one of a layer above its own,
the library has no import circles, and every name is checked against its one registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vaelab
from vaelab.config import ConfigError, RunConfig
from vaelab.settings import check_names, check_settings

SRC = Path(vaelab.__file__).parent


def _is_module(name: str) -> bool:
    """Whether the dotted name ``vaelab.x.y`` is a module or package of this source tree."""
    path = SRC.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def vaelab_imports(path: Path) -> set[str]:
    """The vaelab modules a source file imports (at any depth of the file, lazy imports included).

    ``from vaelab.data import toy2d`` counts as an import of the module ``vaelab.data.toy2d``
    (and ``from vaelab import checkpoint`` of ``vaelab.checkpoint``), not of the package.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vaelab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import is an import from the package
                found.add("." * node.level + (node.module or ""))
            elif node.module and node.module.split(".")[0] == "vaelab":
                submodules = {f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")}
                found |= submodules
                if len(submodules) < len(node.names):  # names defined in the module itself
                    found.add(node.module)
    return found


def module_name(path: Path) -> str:
    """src/vaelab/data/registry.py -> "vaelab.data.registry"; a package's __init__.py -> the package."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every module of the package -> the vaelab modules it imports.

    The bare package ``vaelab`` is left out as an import: Python runs its ``__init__`` before any
    submodule anyway, and it loads nothing itself (its public names are imported on first use).
    """
    return {module_name(p): vaelab_imports(p) - {"vaelab"} for p in sorted(SRC.rglob("*.py"))}


# The layers of DESIGN.md, lowest first: a module may import modules of its own layer and of
# the layers below it, never one above.
#   errors/config -> data, nets, distributions, likelihoods -> models -> objectives, schedules
#   -> train, rundir -> evaluate, diagnostics -> plots, report, sweep, cluster -> cli, explorer
# A module's layer is that of the longest name in LAYER_OF that it starts with, so the files of
# a package (vaelab.train may be a module or a package) share the package's layer unless listed.
LAYER_OF: dict[str, int] = {
    "vaelab.errors": 0, "vaelab.config": 0,
    "vaelab.memory": 0,  # memory checks from sizes alone
    "vaelab.presets": 0,  # named settings: configs
    "vaelab.protocols": 0,  # named evaluation protocols (settings only): vaelab.evaluate applies them
    "vaelab.devices": 0,  # the device rule (auto: cuda, mps, cpu), shared by the library and --device
    "vaelab.plugins": 0,  # imports outside families' modules; imports only errors, models reads it
    "vaelab.data": 1, "vaelab.nets": 1, "vaelab.distributions": 1, "vaelab.likelihoods": 1,
    "vaelab.conditions.spec": 1,  # the condition c of a dataset, and reading what a user gives
    "vaelab.models": 2,
    "vaelab.objectives": 3, "vaelab.schedules": 3,
    "vaelab.settings": 3,  # checks a config against every registry: datasets ... objectives
    "vaelab.sizes": 3,  # the memory a model and its objective's training step need
    "vaelab.train": 4, "vaelab.distributed": 4,
    "vaelab.rundir": 4, "vaelab.checkpoint": 4,  # checkpoint.py is the rundir layer for now
    "vaelab.checkpoint.atomic": 0,  # the one file writer imports only errors: every layer writes through it
    "vaelab.history": 4,  # the per-epoch record of a run
    "vaelab.progress": 4,  # progress=True's line: fit, train_run and evaluate draw it
    "vaelab.evaluate": 5, "vaelab.diagnostics": 5,
    "vaelab.quality": 5,  # sample quality of images: a feature classifier (cached) and the metrics evaluate reports
    "vaelab.analysis": 5,  # computations the figures share (it uses evaluate)
    "vaelab.conditions": 5,  # the package also loads metrics.py: how well samples follow c
    "vaelab.plots": 6, "vaelab.report": 6, "vaelab.sweep": 6, "vaelab.cluster": 6,
    "vaelab.html": 6, "vaelab.png_worker": 6, "vaelab.compare": 6,  # the report's pieces,
    "vaelab.reproduce": 6,  # and the command that reproduces a run (from the sweep's flag table)
    "vaelab.testing": 6,  # the family contract checks: models, objectives, checkpoint, train
    "vaelab.cli": 7, "vaelab.explorer": 7,
    "vaelab": 7, "vaelab.__main__": 7,  # the public API (vaelab.train_run, ...) and `python -m vaelab`
}

# Imports that break the layers today, in files being rewritten by others: (importing module or
# package, imported module). This list may only shrink: an entry that no longer breaks a layer
# must go (test_every_known_layer_violation_still_exists).
KNOWN_LAYER_VIOLATIONS: dict[tuple[str, str], str] = {}

# Import circles in the library today (each a set of modules importing one another), with the
# reason; may only shrink, as above.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def layer_of(module: str) -> int | None:
    """The layer of ``module`` (see LAYER_OF), or None when it has none."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYER_OF and (n > 1 or module == "vaelab"):
            return LAYER_OF[name]
    return None


def layer_violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every (module, imported module) of ``graph`` where the imported one is of a higher layer."""
    return {(module, imported) for module, imports in graph.items() for imported in imports
            if (layer_of(imported) or 0) > (layer_of(module) or 0)}


def _covers(entry: tuple[str, str], edge: tuple[str, str]) -> bool:
    """Whether a KNOWN_LAYER_VIOLATIONS entry (module or package, imported) covers an import."""
    (package, imported), (module, what) = entry, edge
    return (module == package or module.startswith(package + ".")) and what == imported


def import_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), and
    modules that import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, set()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            if len(component) > 1 or v in graph.get(v, set()):
                cycles.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _in_cli(module: str) -> bool:
    return module == "vaelab.cli" or module.startswith("vaelab.cli.")


def library_cycles() -> list[frozenset[str]]:
    """Import circles among the library's modules (the CLI, which may import lazily, left out)."""
    library = {m: {i for i in imports if not _in_cli(i)} for m, imports in import_graph().items() if not _in_cli(m)}
    return import_cycles(library)


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


def test_the_import_scan_names_submodules_imported_from_their_package(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from vaelab import checkpoint as ckpt\nfrom vaelab.data import toy2d\n"
                 "from vaelab.data.registry import load_dataset\n")
    assert vaelab_imports(f) == {"vaelab.checkpoint", "vaelab.data.toy2d", "vaelab.data.registry"}


def test_every_module_has_a_layer() -> None:
    assert [m for m in import_graph() if layer_of(m) is None] == []
    assert layer_of("vaelab.data.registry") == LAYER_OF["vaelab.data"]
    assert layer_of("vaelab.conditions.spec") < layer_of("vaelab.conditions.metrics")  # type: ignore[operator]


def test_no_module_imports_one_of_a_higher_layer() -> None:
    unexpected = sorted(edge for edge in layer_violations(import_graph())
                        if not any(_covers(entry, edge) for entry in KNOWN_LAYER_VIOLATIONS))
    assert unexpected == [], "imports of a higher layer (see DESIGN.md, Layers): " + ", ".join(
        f"{m} (layer {layer_of(m)}) -> {i} (layer {layer_of(i)})" for m, i in unexpected)


def test_every_known_layer_violation_still_exists() -> None:
    violations = layer_violations(import_graph())
    fixed = [entry for entry in KNOWN_LAYER_VIOLATIONS if not any(_covers(entry, edge) for edge in violations)]
    assert fixed == [], f"no longer layer violations: remove {fixed} from KNOWN_LAYER_VIOLATIONS"


def test_the_layer_check_sees_an_import_from_above(tmp_path: Path) -> None:
    # The checks above could pass by finding no edge at all: a lazy import of the CLI in data/ is one.
    (tmp_path / "m.py").write_text("from vaelab.config import RunConfig\n\ndef f():\n    from vaelab.cli import app\n")
    graph = {"vaelab.data.toy2d": vaelab_imports(tmp_path / "m.py")}
    assert layer_violations(graph) == {("vaelab.data.toy2d", "vaelab.cli")}
    assert _covers(("vaelab.train", "vaelab.conditions"), ("vaelab.train.loop", "vaelab.conditions"))
    assert not _covers(("vaelab.train", "vaelab.conditions"), ("vaelab.trainer", "vaelab.conditions"))


def test_the_library_has_no_import_circles() -> None:
    cycles = library_cycles()
    unexpected = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
    assert unexpected == [], f"import circles in the library: {unexpected}"
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert gone == [], f"no longer import circles: remove {gone} from KNOWN_CYCLES"


def test_the_cycle_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(sorted(c) for c in import_cycles(graph)) == [["a", "b", "c"], ["e"]]
