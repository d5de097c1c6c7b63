"""``python -m executus_core.cli``: the ``executus`` command, for environments without its script."""

from executus_core.cli.app import main

main()
