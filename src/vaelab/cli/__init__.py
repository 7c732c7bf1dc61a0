"""The ``vaelab`` command line: parse, call the library, print. All console output lives here.

``app`` is the typer application; importing :mod:`vaelab.cli.commands` registers the commands
on it (their ``@app.command`` decorators). Run evaluation as the CLI does it is in
:mod:`vaelab.cli.evaluation`, console tables and progress bars in :mod:`vaelab.cli.console`,
helpers every command shares in :mod:`vaelab.cli.common`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train, evaluate and explore variational autoencoders.",
)

def _print_version(value: bool) -> None:
    if value:
        import platform

        import torch

        from vaelab import __version__

        typer.echo(f"vaelab {__version__} (torch {torch.__version__}, Python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print vaelab's version (and torch's and Python's) and exit."),
) -> None:
    """Train, evaluate and explore variational autoencoders."""


# Registers every command on ``app``; after ``app`` exists, since the commands module imports it.
from vaelab.cli import commands, sweep  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
