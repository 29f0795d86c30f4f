"""`writebus top` on the real two-region stack: writes from lax show up as syd's traffic, lax's
lag is measured, the view fits 80 columns, Ctrl-C ends it cleanly, and the dashboard role of
nats.conf is enough to run it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from rich.console import Console

from tests.support.natsconf import NATS_CONF, NatsServer, region_env
from tests.support.stack import REPO, settings_for, start_bus
from writebus import Database
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.topview import render
from writebus.bus.watch import Snapshot, Watch
from writebus.client.connect import connect_nats
from writebus.client.protocol import encode, lsn_update

#: How long to wait for something that should happen.
EVENTUALLY = 30.0


@pytest.fixture(scope="module")
def nodes(stack: Any) -> Iterator[str]:
    """A bus node per region on a prefix of their own (fresh counters, no other traffic);
    yields the prefix."""
    prefix = f"top{uuid.uuid4().hex[:8]}"
    procs: dict[str, BusProcess] = {
        r: start_bus(stack, r, log_name=f"bus-{prefix}-{r}", WRITEBUS_PREFIX=prefix)
        for r in ("syd", "lax")
    }
    try:
        yield prefix
    finally:
        for p in procs.values():
            p.stop(10)


@contextlib.asynccontextmanager
async def writing(stack: Any, prefix: str, table: str) -> AsyncIterator[list[int]]:
    """Writes from lax through the bus, one after another, for as long as the block runs;
    yields the running count of writes done."""
    done = [0]
    stop = asyncio.Event()

    async def loop(db: Database) -> None:
        # A flag, not cancellation alone: on Python 3.11 asyncio.wait_for (inside nats-py's
        # request) can lose a cancellation that arrives as its reply does.
        while not stop.is_set():
            await db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [uuid.uuid4().hex])
            done[0] += 1

    async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
        task = asyncio.create_task(loop(db), name="top-test-writer")
        try:
            yield done
        finally:
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)


def top_env(stack: Any, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of `writebus top` run in lax, as an operator would run it."""
    return {**stack.env("lax"), "WRITEBUS_PREFIX": prefix, "COLUMNS": "80", **extra}


async def top(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """`writebus top ARGS` as a fresh process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "writebus", "top", *args,
        env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def by_region(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of a JSON snapshot by region (one node per region here)."""
    return {row["region"]: row for row in snapshot["rows"]}


async def test_a_live_watch_renders_both_regions_in_80_columns(
    stack: Any, nodes: str, table: str
) -> None:
    """Fed by a live Watch while lax writes through the bus, the view shows syd as primary
    serving requests, lax as a replica with its lag, the primary's LSN in the header, and no
    line wider than 80 columns."""
    prefix = nodes
    nc = await connect_nats(settings_for(stack, "lax", prefix=prefix), name="test-top")
    watch = Watch(nc, prefix=prefix)
    await watch.start()

    def ready(snap: Snapshot) -> bool:
        rows = {r.region: r for r in snap.rows}
        syd, lax = rows.get("syd"), rows.get("lax")
        return (
            syd is not None and lax is not None and not syd.stale and not lax.stale
            and (syd.requests_per_s or 0) > 0 and lax.lag_bytes is not None
            and lax.in_flight is not None
        )

    try:
        async with writing(stack, prefix, table):
            deadline = time.monotonic() + EVENTUALLY
            while not ready(snap := watch.snapshot()):
                assert time.monotonic() < deadline, snap
                await asyncio.sleep(0.1)
    finally:
        await watch.stop()
        await nc.close()
    console = Console(record=True, width=80, file=io.StringIO())
    console.print(render(snap, prefix=prefix, stale_after=watch.stale_after))
    out = console.export_text()
    print(out)  # the picture, for whoever reads the test log
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert f"primary LSN {snap.primary_lsn}" in lines[0] and "writes 0/s" not in lines[0], out
    regions = [line.strip() for line in lines if line.strip() in ("syd", "lax")]
    assert regions == ["syd", "lax"], out
    syd = next(r for r in snap.rows if r.region == "syd")
    assert f" primary {syd.lsn} " in out, out
    lax_line = next(line for line in lines if " replica " in line)
    assert lax_line.split()[3] != "-" and "STALE" not in lax_line, out  # lag bytes, fresh


async def test_once_json_reports_traffic_roles_and_lag(stack: Any, nodes: str, table: str) -> None:
    """`writebus top --once --json` (lax's environment) prints one JSON snapshot naming both
    regions with their roles, requests per second above zero on the primary while lax writes,
    a deployment write rate, the primary's LSN, and lax's lag in bytes and seconds."""
    prefix = nodes
    async with writing(stack, prefix, table) as done:
        code, out, err = await top(top_env(stack, prefix), "--once", "--json", "--wait", "2.5")
    assert code == 0, err
    assert done[0] > 0
    snap = json.loads(out)
    rows = by_region(snap)
    assert set(rows) == {"syd", "lax"}, snap
    syd, lax = rows["syd"], rows["lax"]
    assert syd["role"] == "primary" and lax["role"] == "replica"
    assert syd["requests_per_s"] > 0 and snap["writes_per_s"] > 0, snap
    assert syd["p50_ms"] is not None and syd["in_flight"] is not None
    assert isinstance(lax["lag_bytes"], int) and isinstance(lax["lag_seconds"], float), lax
    assert snap["primary_lsn"] and syd["lsn"] and lax["lsn"]
    assert not syd["stale"] and not lax["stale"]


async def test_once_prints_the_table_in_80_columns(stack: Any, nodes: str) -> None:
    """`writebus top --once` prints the rendered view once: both regions, their roles, no line
    over 80 columns, no colour codes when the output is not a terminal."""
    code, out, err = await top(top_env(stack, nodes), "--once", "--wait", "2.5")
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert {"syd", "lax"} <= {line.strip() for line in lines}, out
    assert " primary " in out and " replica " in out and "primary LSN" in lines[0]
    assert "\x1b[" not in out


async def test_live_view_redraws_and_exits_0_on_ctrl_c(stack: Any, nodes: str) -> None:
    """Without --once the view is redrawn in place on a terminal (rich's cursor controls) until
    Ctrl-C, which ends it with exit code 0 and no traceback."""
    env = top_env(stack, nodes, TTY_COMPATIBLE="1")  # rich draws live as on a terminal
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "writebus", "top", "--interval", "0.5",
        env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(EVENTUALLY):
            while seen.count(b" replica ") < 2:  # both nodes heard, drawn at least twice
                chunk = await proc.stdout.read(4096)
                assert chunk, seen.decode(errors="replace")
                seen += chunk
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), EVENTUALLY)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and not err.strip(), err.decode()
    assert b"\x1b[" in seen  # redrawn in place, not printed again and again


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_unreachable_nats_is_one_line(stack: Any) -> None:
    """With nothing listening at NATS_URL, top prints one line naming the endpoint and exits 2."""
    port = _closed_port()
    env = top_env(stack, "writebus", NATS_URL=f"nats://127.0.0.1:{port}",
                  WRITEBUS_CONNECT_TIMEOUT="1")
    code, out, err = await top(env, "--once", "--json")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("writebus top: ") and f"127.0.0.1:{port}" in err


async def test_the_dashboard_role_is_enough(tmp_path: Any) -> None:
    """Against a nats-server running the repository's nats.conf, top connected as the
    read-only ``dashboard`` user shows a bus node's progress broadcasts (published as ``bus``)
    and exits 0 without a word on stderr."""
    server = NatsServer(region="syd", env=region_env("syd"), conf=NATS_CONF, workdir=tmp_path)
    await server.start()
    bus = None
    try:
        bus = await nats.connect(server.url, user="bus", password=server.password("bus"))

        async def broadcast() -> None:
            while True:  # once a second in production; faster here, the window is short
                update = lsn_update(region="syd", replica_id="syd-1", lsn=0x3A2B1C8,
                                    role="primary", in_recovery=False)
                await bus.publish("writebus.lsn.syd", encode(update))
                await asyncio.sleep(0.2)

        publisher = asyncio.create_task(broadcast(), name="top-test-broadcast")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "NATS_URL": server.url,
            "NATS_USER": "dashboard",
            "NATS_PASSWORD": server.password("dashboard"),
        }
        try:
            code, out, err = await top(env, "--once", "--json", "--wait", "1.5")
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
    finally:
        if bus is not None:
            await bus.close()
        await server.stop()
    assert code == 0 and err == "", err
    snap = json.loads(out)
    assert [(r["region"], r["role"], r["lsn"]) for r in snap["rows"]] == [
        ("syd", "primary", "0/3A2B1C8")
    ]
    assert snap["primary_lsn"] == "0/3A2B1C8" and not snap["rows"][0]["stale"]
