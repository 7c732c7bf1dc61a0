"""Model families from outside vaelab: plugin modules and the ``vaelab.families`` entry points.

A family of one's own is a ``LatentModel`` subclass in a module of one's own (docs/plugins.md).
vaelab finds it in three ways:

``vaelab.families`` entry points
    An installed distribution declares, in its ``pyproject.toml``::

        [project.entry-points."vaelab.families"]
        mixprior = "mypkg.families:MixPriorVAE"

    One rule: the entry point's *name* is the family's name (``--model mixprior``) and its
    *value* the class, ``module:Class``. vaelab registers the class under that name itself, the
    first time it needs the list of families (``vaelab.models.FAMILIES``), not at start-up.
    A broken entry point (its module fails to import, the value is no family class, the name is
    taken) never breaks the other families: asking for that family gives an error naming the
    distribution, the entry point and the cause.
``VAELAB_PLUGINS`` (environment variable)
    Comma-separated modules (a dotted name, or the path of a ``.py`` file), imported the first
    time vaelab needs the list of families, in every process, sweep workers and torchrun ranks
    included. Such a module registers its families when imported
    (``vaelab.models.register_family("mixprior", MixPriorVAE)`` at module level).
``vaelab --plugin MODULE`` (command line, repeatable)
    The same modules, imported before the command runs; the command passes them on to the
    processes it starts through ``VAELAB_PLUGINS``.

A run records where its family came from (``module:Class``, in the weights' metadata, see
vaelab.checkpoint), so ``vaelab eval / report / compare / explore`` import that module by
themselves; when it cannot be imported the error names it and what to install or pass.

This module only imports; what a family is and the registry belong to vaelab.models.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from vaelab.errors import InputError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "vaelab.families"
ENV_VAR = "VAELAB_PLUGINS"
DOCS = "docs/plugins.md"


class PluginError(InputError):
    """A plugin module or entry point that cannot be imported or does not give a family."""


def env_plugins() -> list[str]:
    """The modules named in ``VAELAB_PLUGINS`` (comma-separated; blanks ignored), in order."""
    return [part.strip() for part in os.environ.get(ENV_VAR, "").split(",") if part.strip()]


def is_file_spec(spec: str) -> bool:
    """Whether a plugin is given as a file path (``./myfam.py``) rather than a module name."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def _where(err: BaseException) -> str:
    """`` (file.py, line N)``: the innermost frame the error was raised in, when there is one."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" ({last.filename}, line {last.lineno})"


def describe_error(err: BaseException) -> str:
    """``Type: message (file, line N)``: the cause of a failed import, in one line."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}{': ' + message if message else ''}{_where(err)}"


def _missing_itself(err: ModuleNotFoundError, module: str) -> bool:
    """Whether the module (or a package above it) is what was not found, not one of its imports."""
    parts = module.split(".")
    return err.name is not None and err.name in {".".join(parts[:n]) for n in range(1, len(parts) + 1)}


def how_to_import(module: str) -> str:
    """What makes a module importable: the advice every 'cannot import' error ends with."""
    top = module.split(".")[0]
    return (f"make it importable: `pip install -e PATH` the project that holds it, or put the folder that "
            f"holds {top}/ or {top}.py on PYTHONPATH (PYTHONPATH=FOLDER vaelab ...), or give the file itself: "
            f"vaelab --plugin path/to/{top}.py ... (see {DOCS})")


def _import_file(path: Path) -> ModuleType:
    """Import a ``.py`` file as the module named after it (``myfam.py`` -> ``myfam``), so classes
    defined in it record ``myfam`` as their module."""
    name = path.stem
    known = sys.modules.get(name)
    if known is not None:
        if Path(getattr(known, "__file__", "") or "").resolve() == path.resolve():
            return known
        raise PluginError(f"plugin {path}: a module named {name!r} is already imported from "
                          f"{getattr(known, '__file__', 'elsewhere')}; rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_plugin(spec: str, source: str = "--plugin") -> ModuleType:
    """Import the plugin module ``spec``: a dotted module name, or the path of a ``.py`` file.

    ``source`` says where it was named (``--plugin``, ``VAELAB_PLUGINS``, a run), for the errors.

    Raises:
        PluginError: the module cannot be found (naming it and how to make it importable), or
            importing it raised (naming the module, the error and the line).
    """
    what = f"plugin module {spec!r} ({source})"
    if is_file_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise PluginError(f"{what}: no such file{' (' + str(path.resolve()) + ')' if path.exists() else ''}; "
                              "give the path of a .py file, or a module name (mypkg.families)")
        try:
            return _import_file(path)
        except PluginError:
            raise
        except Exception as err:
            raise PluginError(f"{what}: importing it failed: {describe_error(err)}; fix the module, or "
                              f"drop it from {source}") from err
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if _missing_itself(err, spec):
            raise PluginError(f"{what}: cannot import it ({err}); {how_to_import(spec)}") from err
        raise PluginError(f"{what}: importing it failed: {describe_error(err)}; install what it needs, "
                          f"or drop it from {source}") from err
    except Exception as err:
        raise PluginError(f"{what}: importing it failed: {describe_error(err)}; fix the module, or drop it from "
                          f"{source}") from err


def import_plugins(specs: list[str], source: str) -> list[ModuleType]:
    """Import each of ``specs`` in order (see ``import_plugin``)."""
    return [import_plugin(spec, source) for spec in specs]


def family_entry_points() -> list[EntryPoint]:
    """The installed ``vaelab.families`` entry points (one per family), in the order found."""
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def describe_entry_point(ep: EntryPoint) -> str:
    """``'name = module:Class' of the distribution D 1.0``: how errors name an entry point."""
    dist = getattr(ep, "dist", None)
    owner = f" of the distribution {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}){owner}"


def load_entry_point(ep: EntryPoint) -> object:
    """The object an entry point names (importing its module).

    Raises:
        PluginError: naming the entry point, its distribution and the cause.
    """
    try:
        return ep.load()
    except Exception as err:
        raise PluginError(f"the model family {ep.name!r} cannot be loaded: {describe_entry_point(ep)} failed: "
                          f"{describe_error(err)}; fix or reinstall that distribution, or uninstall it "
                          "(pip uninstall)") from err


def import_recorded(kind: str, source: str) -> ModuleType:
    """Import the module a saved run recorded for its family ``kind`` (``source`` = ``module:Class``).

    Raises:
        PluginError: the module is ``__main__`` (a script or notebook), cannot be found (naming
            it, the ``--plugin`` to give and what to install), or fails on import.
    """
    module = source.partition(":")[0]
    if module == "__main__":
        raise PluginError(f"the run's model family {kind!r} ({source}) was defined in a script or notebook "
                          "(__main__), which vaelab cannot import: register it first (vaelab.models."
                          f"register_family({kind!r}, ...)) and load the run in that process, or move the class "
                          f"into a module and give it with --plugin MODULE (see {DOCS})")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if not _missing_itself(err, module):
            raise PluginError(f"the run's model family {kind!r} comes from the module {module!r} ({source}), "
                              f"whose import failed: {describe_error(err)}; install what it needs") from err
        raise PluginError(
            f"the run's model family {kind!r} comes from the module {module!r} ({source}), which cannot be "
            f"imported here ({err}): install the package that provides it (pip install ...), or put its folder "
            f"on PYTHONPATH, or give it: vaelab --plugin {module} ... (or --plugin path/to/"
            f"{module.split('.')[-1]}.py; VAELAB_PLUGINS={module} works too)") from err
    except Exception as err:
        raise PluginError(f"the run's model family {kind!r} comes from the module {module!r} ({source}), whose "
                          f"import failed: {describe_error(err)}; fix the module") from err


__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "PluginError", "describe_entry_point", "describe_error", "env_plugins",
           "family_entry_points", "how_to_import", "import_plugin", "import_plugins", "import_recorded",
           "is_file_spec", "load_entry_point"]
