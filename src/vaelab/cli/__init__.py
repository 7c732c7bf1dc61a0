"""The ``vaelab`` command line: parse, call the library, print. All console output lives here.

``app`` is the typer application; importing :mod:`vaelab.cli.commands` registers the commands
on it (their ``@app.command`` decorators). Run evaluation as the CLI does it is in
:mod:`vaelab.cli.evaluation`, console tables and progress bars in :mod:`vaelab.cli.console`,
helpers every command shares in :mod:`vaelab.cli.common`.
"""

from __future__ import annotations

import os

import typer

from vaelab.cli.common import VaelabGroup  # it imports no torch

app = typer.Typer(
    cls=VaelabGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train, evaluate and explore variational autoencoders.",
)

def _print_version(value: bool) -> None:
    if value:
        import platform

        import torch

        from vaelab import __version__

        typer.echo(f"vaelab {__version__} (torch {torch.__version__}, Python {platform.python_version()})")
        raise typer.Exit()


def _import_plugins(given: list[str]) -> None:
    """Import the modules of ``VAELAB_PLUGINS`` and then each ``--plugin``, before the command
    runs, so the families they register are known to it (vaelab.plugins). ``--plugin`` modules
    are added to ``VAELAB_PLUGINS`` for the processes the command starts (sweep workers,
    torchrun ranks), file paths made absolute."""
    from vaelab import plugins

    from_env = plugins.env_plugins()
    plugins.import_plugins(from_env, plugins.ENV_VAR)
    plugins.import_plugins(given, "--plugin")
    if given:
        passed = [os.path.abspath(spec) if plugins.is_file_spec(spec) else spec for spec in given]
        os.environ[plugins.ENV_VAR] = ",".join(dict.fromkeys(from_env + passed))


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print vaelab's version (and torch's and Python's) and exit."),
    plugin: list[str] = typer.Option(
        None, "--plugin", metavar="MODULE",
        help="import MODULE (a module name, or the path of a .py file) before the command, for the model "
             "families it registers; repeatable. $VAELAB_PLUGINS (comma-separated) does the same, and "
             "installed packages declare theirs as vaelab.families entry points (docs/plugins.md)"),
) -> None:
    """Train, evaluate and explore variational autoencoders."""
    if plugin or os.environ.get("VAELAB_PLUGINS"):
        from vaelab.cli.common import user_errors  # an unimportable plugin: one message, exit code 2

        user_errors(_import_plugins)(list(plugin or []))


# Registers every command on ``app``; after ``app`` exists, since the commands module imports it.
from vaelab.cli import commands, sweep  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
