"""Helpers every command shares: user errors as one-line messages, the device, integer lists."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.markup import escape

from vaelab.cli.console import err_console
from vaelab.errors import InputError, VaelabError

if TYPE_CHECKING:
    import torch

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn vaelab's own errors (``VaelabError``) and the operating system's errors about the
    user's files (``OSError``: a missing folder, a full disk) into a one-paragraph message and
    exit code 2. Anything else is a bug in vaelab and keeps its traceback.

    Set VAELAB_DEBUG=1 to see the full traceback of a user error too.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (VaelabError, OSError) as err:
            if os.environ.get("VAELAB_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, then mps, else cpu; otherwise the named device, checked."""
    import torch  # here, not at the top: commands that need no device start without torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
    if name == "mps" and (getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available()):
        raise InputError("device 'mps' requested but MPS (Apple's GPU backend) is not available here; use "
                         "--device cpu or auto")
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: this machine has CUDA devices 0 to {torch.cuda.device_count() - 1}; "
                             "use --device cuda:N with one of them, or auto")
    return torch.device(name)


def _split_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    if "" in parts and text.strip():  # "32,,32" was read as 32,32 (audit TR84)
        raise InputError(f"{what} {text!r} has an empty value between commas; give integers like 128,128")
    try:
        return [int(v) for v in parts if v]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers like 128,128; got {text!r}") from None
