"""Sweeps: many configurations trained as one command (``vaelab sweep``).

``grid`` reads and checks the grid and expands it into member configs; ``run`` trains the
members (groups of stackable members together) into a sweep folder of ordinary run
directories and evaluates them; ``report`` writes the sweep's page, sweep.html. ``stack`` is
the vectorized engine: ``fit_stack`` trains the members of a group as one stacked model.
"""

from vaelab.sweep.stack import MemberResult, StackInterrupted, can_stack, fit_stack

__all__ = ["MemberResult", "StackInterrupted", "can_stack", "fit_stack"]
