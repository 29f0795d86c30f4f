"""Environments and processes on the session's two-region stack."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.settings import BusSettings
from writebus.client.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PROCEDURES = "tests.procedures:procedures"
#: One-way delay of the simulated WAN in tests: small, but enough that replication, replies and
#: broadcasts genuinely race each other.
TEST_DELAY_MS = float(os.environ.get("WRITEBUS_TEST_DELAY_MS", "5"))


def bus_env(stack: Any, region: str, **extra: str) -> dict[str, str]:
    """Environment for a bus node of ``region`` serving the test procedures."""
    env = stack.env(region)
    env.update(
        WRITEBUS_PROCEDURES=PROCEDURES,
        WRITEBUS_LOG_FORMAT="json",
        WRITEBUS_HTTP_ADDR="127.0.0.1:0",  # a free port each: nodes share this host
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


def settings_for(stack: Any, region: str, **changes: Any) -> Settings:
    """Client settings for an app in ``region``."""
    return Settings.from_env(stack.env(region)).replace(**changes)


def bus_settings_for(stack: Any, region: str, **changes: Any) -> BusSettings:
    """Settings for an in-process bus node in ``region`` (HTTP on a free port)."""
    changes.setdefault("http_addr", ("127.0.0.1", 0))
    return BusSettings.from_env(stack.env(region)).replace(**changes)


def primary_rows(stack: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Query the primary directly (ground truth)."""
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def deferred_child(stack: Any, table: str, parents: tuple[int, ...] = ()) -> str:
    """Make ``<table>_parent`` (holding ``parents``) and ``<table>_child``, whose foreign key
    to it is checked at COMMIT (deferred): an insert of a missing parent fails COMMIT with
    23503. Returns the child table's name."""
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table}_parent (id int PRIMARY KEY)")
        for pid in parents:
            conn.execute(f"INSERT INTO {table}_parent VALUES (%s)", [pid])
        conn.execute(
            f"CREATE TABLE {table}_child (pid int REFERENCES {table}_parent "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
    return f"{table}_child"


def http_url(bus: BusProcess) -> str:
    """Base URL of a bus process's HTTP listener, read from its ``bus.ready`` log line."""
    import json

    for line in bus.log_path.read_text().splitlines():
        if '"bus.ready"' in line:
            addr = json.loads(line)["http"]
            return f"http://{addr}"
    raise AssertionError(f"{bus.name} logged no bus.ready line")
