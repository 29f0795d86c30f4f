"""Session-wide real servers: a two-region stack and a bus node per region.

The stack (Postgres primary + streaming replica, a nats-server per region joined by a gateway,
a WAN proxy) starts once per test session; tests isolate themselves by table name and subject
prefix, never by restarting servers. Servers are local processes (see ``tests/servers.py`` for
the Docker/testcontainers backend used where a Docker engine is reachable).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from writebus.bus.embedded.bus_process import BusProcess
from writebus.client.db import Database
from writebus.client.settings import Settings
from tests.servers import make_stack

REPO = Path(__file__).resolve().parent.parent
PROCEDURES = "tests.procedures:procedures"
#: One-way delay of the simulated WAN in tests: small, but enough that replication, replies and
#: broadcasts genuinely race each other.
TEST_DELAY_MS = float(os.environ.get("WRITEBUS_TEST_DELAY_MS", "5"))


@pytest.fixture(scope="session")
def stack() -> Iterator[Any]:
    """The two-region stack (primary ``syd``, replica ``lax``)."""
    s = make_stack(one_way_delay_ms=TEST_DELAY_MS)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def bus_env(stack: Any, region: str, **extra: str) -> dict[str, str]:
    """Environment for a bus node of ``region`` serving the test procedures."""
    env = stack.env(region)
    env.update(
        WRITEBUS_PROCEDURES=PROCEDURES,
        WRITEBUS_LOG_FORMAT="json",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


def start_bus(stack: Any, region: str, *, log_name: str, **extra: str) -> BusProcess:
    """Start a bus node process and wait until it serves -- from every region.

    Gateways forward a request to another region only once that region's subscription has
    reached them (one WAN delay after it was made); until then a caller elsewhere would hear
    "no responders". The client library rides through that by retrying, but tests that speak
    raw NATS need the interest in place, so wait for it.
    """
    env = bus_env(stack, region, **extra)
    bus = stack.start_bus(region, env=env, log_name=log_name)
    bus.wait_ready(30)
    if env["NATS_URL"] == stack.nats_url(region):
        prefix = env.get("WRITEBUS_PREFIX", "writebus")
        subjects = [f"{prefix}.rpc.{region}"]
        if region == stack.primary_region:
            subjects.append(f"{prefix}.write")
        for other in stack.regions:
            server = stack.nats[other]
            if other != region and hasattr(server, "wait_gateway_interest"):
                server.wait_gateway_interest(region, subjects, timeout=10)
    return bus


@pytest.fixture(scope="session")
def buses(stack: Any) -> Iterator[dict[str, BusProcess]]:
    """A bus node per region on the default prefix, for the whole session."""
    procs = {r: start_bus(stack, r, log_name=f"bus-{r}") for r in ("syd", "lax")}
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop(10)


def settings_for(stack: Any, region: str, **changes: Any) -> Settings:
    """Client settings for an app in ``region``."""
    return Settings.from_env(stack.env(region)).replace(**changes)


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


def primary_rows(stack: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Query the primary directly (ground truth)."""
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()
