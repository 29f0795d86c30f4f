"""writebus: read from the nearby Postgres replica, write through NATS to the primary, and read
your own writes.

::

    from writebus import Database, Settings

    async with Database(Settings.from_env()) as db:
        await db.execute("INSERT INTO notes(body) VALUES (%s)", ["hi"])
        rows = await db.fetch("SELECT body FROM notes")   # sees the insert

The public API is re-exported here. The rest lives in ``writebus.client`` (the library) and
``writebus.bus`` (the service, ``writebus serve``).
"""

from writebus.client import *  # noqa: F403
from writebus.client import __all__ as _client_all

__all__ = list(_client_all)
