"""The ``vaelab`` command line: parse, call the library, print. All console output lives here."""

from vaelab.cli.commands import app, main

__all__ = ["app", "main"]
