"""Session-wide real servers: a two-region stack and a bus node per region.

The stack (Postgres primary + streaming replica, a nats-server per region joined by a gateway,
a WAN proxy) starts once per test session; tests isolate themselves by table name and subject
prefix, never by restarting servers. Servers are local processes (see
``tests/support/servers.py`` for the Docker/testcontainers backend used where a Docker engine is
reachable). Helper functions live in :mod:`tests.support`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.support.servers import make_stack
from tests.support.stack import TEST_DELAY_MS, settings_for, start_bus
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.environ import forget_client_settings
from writebus.bus.embedded.nats import NatsServer
from writebus.bus.embedded.ports import free_port
from writebus.bus.pg import durable_commits
from writebus.client.db import Database

# The suite runs its own servers: a developer's NATS_TLS_CA or PGOPTIONS (for their own
# servers) would make connections to them fail -- unless the fakes run on the developer's own
# database (WRITEBUS_FAKE_DATABASE_URL), which may need its PG* settings (the stack's URLs
# name the ones that matter most: PostgresServer.url). HTTP to this machine goes direct.
forget_client_settings(keep_libpq="WRITEBUS_FAKE_DATABASE_URL" in os.environ)
for _name in ("no_proxy", "NO_PROXY"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1,localhost"]))


@pytest.fixture(scope="session")
def stack() -> Iterator[Any]:
    """The two-region stack (primary ``syd``, replica ``lax``)."""
    s = make_stack(one_way_delay_ms=TEST_DELAY_MS)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def buses(stack: Any) -> Iterator[dict[str, BusProcess]]:
    """A bus node per region on the default prefix, for the whole session."""
    procs = {r: start_bus(stack, r, log_name=f"bus-{r}") for r in ("syd", "lax")}
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop(10)


@pytest.fixture
def table(stack: Any) -> str:
    """A fresh notes table on the primary, already replayed by the replica."""
    name = f"notes_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {name} (id bigserial PRIMARY KEY, body text NOT NULL UNIQUE, "
            "n int CHECK (n >= 0))"
        )
    stack.wait_replica_caught_up(10)
    return name


@pytest.fixture
async def lax_db(stack: Any, buses: Any) -> AsyncIterator[Database]:
    """A client in the replica region ``lax``."""
    async with Database(settings_for(stack, "lax")) as db:
        yield db


@pytest.fixture
async def syd_db(stack: Any, buses: Any) -> AsyncIterator[Database]:
    """A client in the primary region ``syd``."""
    from tests.procedures import procedures

    async with Database(settings_for(stack, "syd"), procedures=procedures) as db:
        yield db


@pytest.fixture
async def worker_pool(stack: Any, buses: Any) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A bus worker's kind of pool on the primary: autocommit, durable commits (the
    session's bus created the exactly-once table), for tests that call the executor."""
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        stack.primary.url, min_size=1, max_size=4, kwargs={"autocommit": True},
        configure=durable_commits, open=False,
    )
    await p.open(wait=True)
    yield p
    await p.close()


@pytest.fixture
def lone_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own, outside the stack: to pause, stop or starve."""
    srv = NatsServer(
        name="nats-lone",
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
