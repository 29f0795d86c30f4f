"""``python -m writebus.bus``: the ``writebus`` command."""

from writebus.bus.cli import main

main()
