"""Which device a model runs on: the one rule of the library (``train_run``, ``evaluate_run``)
and of the command line's ``--device``.

``auto`` takes the first of CUDA, MPS (Apple's GPU backend) and the CPU that this machine has;
a named device is checked here, so that asking for one the machine lacks is a plain error and
not a torch traceback in the middle of a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaelab.errors import InputError

if TYPE_CHECKING:
    import torch

NAMES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available(torch_module: object) -> bool:
    mps = getattr(getattr(torch_module, "backends", None), "mps", None)
    return mps is not None and bool(mps.is_available())


def pick_device(name: str | torch.device = "auto", *, option: str = "device") -> torch.device:
    """``auto`` -> cuda if available, then mps, else cpu; otherwise the named device, checked.

    ``option`` names the setting in the messages: ``device`` for a Python argument
    (``use device='cpu'``), ``--device`` for the command line (``use --device cpu``). A
    ``torch.device`` of another type than cpu, cuda or mps is taken as given.

    Raises:
        InputError: an unknown name, or a device this machine does not have.
    """
    import torch  # here, not at the top: `vaelab --help` and `import vaelab` start without torch

    def use(value: str) -> str:
        return f"{option} {value}" if option.startswith("--") else f"{option}={value!r}"

    if isinstance(name, torch.device):
        if name.type not in ("cpu", "cuda", "mps"):
            return name
        name = str(name)
    if not isinstance(name, str):
        raise InputError(f"{option} must be a device name ({NAMES}) or a torch.device, got {type(name).__name__}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r}; use {NAMES}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available here; use {use('cpu')} or auto")
    if name == "mps" and not _mps_available(torch):
        raise InputError(f"device 'mps' requested but MPS (Apple's GPU backend) is not available here; use "
                         f"{use('cpu')} or auto")
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: this machine has CUDA devices 0 to {torch.cuda.device_count() - 1}; "
                             f"use {use('cuda:N')} with one of them, or auto")
    return torch.device(name)
