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

# Registers every command on ``app``; after ``app`` exists, since the commands module imports it.
from vaelab.cli import commands, sweep  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
