"""``python -m vaelab`` runs the command line."""

from vaelab.cli import main

main()
