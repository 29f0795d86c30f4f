"""Demo application for docker-compose: a client in the replica region writing through the bus.

Runs in the writebus image with its settings from the environment (service ``demo`` in
``docker-compose.yml``, connected as the NATS user ``app``). It creates a table through the bus,
then inserts rows and reads each one back at once from the local replica, counting stale reads.
The exit status is non-zero when any read was stale or the bus never answered.

``writebus demo`` is the self-contained version that starts its own servers; this script only
talks to servers that are already running.
"""

from __future__ import annotations

import asyncio
import sys
import time

from writebus import (
    Database,
    DisconnectedError,
    NoWorkerError,
    RpcTimeoutError,
    Settings,
    UnavailableError,
)

TABLE = "writebus_compose_demo"
WRITES = 20
#: How long to keep retrying the first write while the bus in the primary region starts.
STARTUP_TIMEOUT = 60.0


async def _create_table(db: Database) -> None:
    """Create the demo table through the bus, retrying until a bus worker answers."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            await db.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, body text NOT NULL)"
            )
            return
        except (NoWorkerError, DisconnectedError, RpcTimeoutError, UnavailableError) as exc:
            if time.monotonic() > deadline:
                raise
            print(f"waiting for the bus: {exc}", flush=True)
            await asyncio.sleep(1.0)  # the bus is still starting; poll again


async def main() -> int:
    """Write and read back; return the exit status."""
    settings = Settings.from_env()
    print(f"demo in {settings.region}, primary region {settings.primary_region}", flush=True)
    stale = 0
    async with Database(settings) as db:
        await _create_table(db)
        for i in range(WRITES):
            body = f"note {i}"
            res = await db.execute(f"INSERT INTO {TABLE}(body) VALUES (%s) RETURNING id", [body])
            row_id = res.rows[0][0]
            row = await db.fetchrow(f"SELECT body FROM {TABLE} WHERE id = %s", [row_id])
            ok = row is not None and row[0] == body
            stale += not ok
            print(
                f"{i:>3}  id {row_id:>5}  total {res.timings.total_ms:7.1f} ms  "
                f"{'ok' if ok else 'STALE'}",
                flush=True,
            )
    print(f"stale reads: {stale} of {WRITES}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
