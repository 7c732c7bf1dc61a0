"""Memory checks from sizes alone: refuse a request that cannot fit before anything is allocated.

A typo such as ``--n-train 100000000000`` otherwise ends in an allocator traceback, or in
minutes of swapping before one. These checks compare an estimate of the bytes with the
machine's physical memory and say how much it would take and what to change. They need
nothing but sizes (no torch), so the data layer uses them as well as :mod:`vaelab.sizes`,
which estimates what a model and its training step need.
"""

from __future__ import annotations

import os

from vaelab.errors import InputError

FLOAT_BYTES = 4


class SizeError(InputError):
    """A requested size would need more memory than the machine has."""


def physical_memory() -> int:
    """Bytes of physical memory of this machine (a large fallback where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 2**40


def format_bytes(n: float) -> str:
    """1.5e12 -> '1.5 TB' (decimal units, as the allocator reports)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"  # unreachable


def check_fits(nbytes: float, what: str, fix: str, *, share: float = 1.0) -> None:
    """Raise SizeError naming ``what`` and ``fix`` when ``nbytes`` exceed ``share`` of physical
    memory (a working buffer that takes nearly all of it leaves the machine swapping)."""
    limit = physical_memory()
    if nbytes > limit * share:
        part = "" if share == 1.0 else "half of " if share == 0.5 else f"{share:.0%} of "
        raise SizeError(
            f"{what} would need about {format_bytes(nbytes)} of memory, more than {part}this machine's "
            f"{format_bytes(limit)}; {fix}"
        )


def check_rows_fit(n: int, dim: int, what: str, fix: str) -> None:
    """Refuse drawing an (n, dim) table of float64 values (as generated, before the float32 copy)."""
    check_fits(float(n) * dim * 12, what, fix)
