"""``python -m writebus``: the ``writebus`` command."""

from writebus.bus.cli import main

main()
