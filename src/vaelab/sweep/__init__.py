"""Sweeps: many configurations trained as one command (``vaelab sweep``).

``grid`` reads and checks the grid and expands it into member configs; ``run`` trains the
members (groups of stackable members together, with ``vaelab.train.fit_stack``) into a sweep
folder of ordinary run directories and evaluates them; ``report`` writes the sweep's page,
sweep.html.
"""
