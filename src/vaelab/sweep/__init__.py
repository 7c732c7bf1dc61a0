"""Sweeps: many configurations of one run, trained together where they share an architecture.

``stack``: the vectorized engine (``can_stack``, ``fit_stack``, ``MemberResult``).
"""

from vaelab.sweep.stack import MemberResult, StackInterrupted, can_stack, fit_stack

__all__ = ["MemberResult", "StackInterrupted", "can_stack", "fit_stack"]
