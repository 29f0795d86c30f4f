"""A NATS connection closed for good is reopened by the next write (real nats-server).

nats-py closes a connection for good on most ``-ERR`` lines from the server (an expired JWT:
"User Authentication Expired"); the test closes it the same way, with ``close()``, since a
plain nats-server reload that revokes a password only drops the connection (nats-py then
reconnects by itself, and a write meanwhile is not sent: DisconnectedError)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from writebus.bus.embedded.nats import NatsServer
from writebus.bus.embedded.ports import free_port
from writebus.client.db import Database
from writebus.client.errors import DisconnectedError, NoWorkerError, Outcome
from writebus.client.settings import Settings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(
        name="nats-reopen",
        region="x",
        client_port=free_port(),
        gateway_port=free_port(),
        monitor_port=free_port(),
        workdir=tmp_path,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def test_a_connection_closed_for_good_is_reopened_by_the_next_write(
    stack: Any, server: NatsServer
) -> None:
    """The next write goes out on a new connection (no worker listens on this server:
    NoWorkerError, so it was sent and answered) and the tracker moved onto it -- before,
    every write said "not connected" for the life of the process. While no server accepts,
    a write is not sent: DisconnectedError, not applied."""
    env = {"NATS_URL": server.url, "FLY_REGION": "lax", "PRIMARY_REGION": "syd",
           "WRITEBUS_RPC_TIMEOUT": "1", "WRITEBUS_CONNECT_TIMEOUT": "1",
           "DATABASE_URL": stack.env("lax")["DATABASE_URL"]}  # fmt: skip
    async with Database(Settings.from_env(env)) as db:
        first, tracker = db.nats, db.tracker
        assert first is not None and tracker is not None
        await first.close()
        with pytest.raises(NoWorkerError):
            await db.execute("SELECT 1")
        second = db.nats
        assert second is not first and second is not None and second.is_connected
        assert db.tracker is not tracker and db.tracker is not None and tracker._closed
        server.stop()
        await second.close()
        with pytest.raises(DisconnectedError) as refused:
            await db.execute("SELECT 1")
        assert refused.value.outcome is Outcome.NOT_APPLIED
