"""The latent explorer: a local web page (Flask app + shipped static files) to play with trained runs.

``create_app(run_dirs)`` (in ``vaelab.explorer.app``) loads the runs and returns the Flask app;
``vaelab explore RUN [RUN ...]`` serves it. Flask is imported only when the app is built, so
other commands pay nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import flask

__all__ = ["create_app"]


def create_app(run_dirs: list[Path], **options: Any) -> flask.Flask:
    """Build the explorer's Flask app for ``run_dirs`` (see ``vaelab.explorer.app.create_app``)."""
    from vaelab.explorer.app import create_app as _create

    return _create(run_dirs, **options)
