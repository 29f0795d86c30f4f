"""The servers a run measures: a two-region stack, bus nodes, tables, client settings."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.ports import free_port
from writebus.bus.embedded.stack import Stack
from writebus.client.settings import Settings

#: The table every write of the run goes to (one row per write).
TABLE = "bench_writes"
INSERT_SQL = f"INSERT INTO {TABLE} (approach, body) VALUES (%s, %s) RETURNING id"
INSERT_NO_ID_SQL = f"INSERT INTO {TABLE} (approach, body) VALUES (%s, %s)"
READ_SQL = f"SELECT 1 FROM {TABLE} WHERE id = %s"
#: Prefix of the bus nodes serving the latency measurements.
PREFIX = "bench"


async def start_stack(delay_ms: float) -> Stack:
    """Start a two-region stack (primary ``syd``, replica ``lax``) with the given WAN delay."""
    stack = Stack(one_way_delay_ms=delay_ms)
    await asyncio.to_thread(stack.start)
    return stack


async def start_buses(
    stack: Stack,
    region: str,
    *,
    prefix: str,
    count: int = 1,
    max_concurrency: int = 32,
    name: str = "bus",
    env: dict[str, str] | None = None,
) -> list[BusProcess]:
    """Start ``count`` bus processes in ``region`` on ``prefix`` and wait until they serve.
    ``env`` adds settings (``WRITEBUS_GROUP_MAX``, ``WRITEBUS_EVENT_LOOP``, ...)."""
    env = {
        "WRITEBUS_PREFIX": prefix,
        "WRITEBUS_MAX_CONCURRENCY": str(max_concurrency),
        "WRITEBUS_LOG_FORMAT": "json",
        "WRITEBUS_LOG_LEVEL": "warning",
        **(env or {}),
    }
    # Each node's /metrics on a port known here (the throughput phase reads its group counts).
    procs = [
        stack.start_bus(
            region,
            env={"WRITEBUS_HTTP_ADDR": f"127.0.0.1:{free_port()}", **env},
            log_name=f"{name}-{region}-{i + 1}",
        )
        for i in range(count)
    ]
    await asyncio.gather(*(p.wait_ready_async(30) for p in procs))
    return procs


async def stop_buses(procs: list[BusProcess]) -> None:
    """Stop bus processes (they drain first)."""
    await asyncio.gather(*(asyncio.to_thread(p.stop, 10) for p in procs))


async def create_table(stack: Stack) -> None:
    """Create the writes table on the primary and wait until the replica has it."""
    async with await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, "
            "approach text NOT NULL, body text NOT NULL)"
        )
    await asyncio.to_thread(stack.wait_replica_caught_up, 30)


def settings(stack: Stack, region: str, *, prefix: str = PREFIX, **changes: Any) -> Settings:
    """Client settings of an app in ``region`` talking to bus nodes on ``prefix``."""
    return Settings.from_env(stack.env(region, WRITEBUS_PREFIX=prefix)).replace(**changes)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux ``/proc``); 0 elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces: fields after the closing parenthesis are fixed.
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_busy_seconds() -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of the whole machine since boot (Linux ``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / ticks, total / ticks
