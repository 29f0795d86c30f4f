"""The bus service: roles, progress publishing cadence, draining on SIGTERM."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

import msgspec
import nats
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.procedures import procedures
from tests.support.stack import bus_settings_for, primary_rows, settings_for, start_bus
from writebus.bus import idempotency
from writebus.bus.service import BusService
from writebus.client import NO_RETRY, Database


async def test_roles_follow_the_database(stack: Any) -> None:
    """A node on the primary serves writes; a node on a standby publishes replay progress."""
    prefix = f"svc{uuid.uuid4().hex[:8]}"
    async with BusService(bus_settings_for(stack, "syd", prefix=prefix), procedures=procedures) as p:
        async with BusService(bus_settings_for(stack, "lax", prefix=prefix),
                              procedures=procedures) as r:
            assert p.role == "primary" and p.write_server is not None
            assert r.role == "replica" and r.write_server is None and r.monitor is not None


async def test_a_newer_primary_heard_while_starting_fences_the_node(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer primary announced while the node makes its schema -- after it listened for one
    -- fences it once it starts: it leaves the write group, and its health says why. (It used
    to serve writes for good, refusing each one.)"""
    prefix = f"svc{uuid.uuid4().hex[:8]}"
    node = BusService(bus_settings_for(stack, "syd", prefix=prefix, fence_wait=0.0),
                      procedures=procedures)  # fmt: skip
    real = idempotency.ensure_schema

    async def heard_meanwhile(*args: Any, **kwargs: Any) -> None:
        rival = SimpleNamespace(region="lax", replica_id="rival",
                                timeline=(node.fence.timeline or 1) + 1)  # fmt: skip
        node.heard_primary(rival)
        await real(*args, **kwargs)

    monkeypatch.setattr(idempotency, "ensure_schema", heard_meanwhile)
    async with node:
        deadline = time.monotonic() + 5
        while node.role != "fenced":
            assert time.monotonic() < deadline, node.role
            await asyncio.sleep(0.01)
        assert node.write_server is None and node.committer is None
        assert "fenced: rival in lax" in (node.problem() or "")


async def test_a_database_found_on_a_newer_timeline_stamps_replies_with_it(
    stack: Any, table: str
) -> None:
    """The node has no timeline for its database (as before a read); its next heartbeat finds
    timeline 1: its replies and its fence say 1 from then on, as its announcements do. (A
    node whose address moved to a server promoted again kept stamping replies with the
    timeline it read at take-over while announcing the new one, so every tracker took each
    write for one a promotion had left behind: lost.)"""
    prefix = f"tl{uuid.uuid4().hex[:8]}"
    async with BusService(bus_settings_for(stack, "syd", prefix=prefix),
                          procedures=procedures) as node:  # fmt: skip
        assert node.handler is not None and node.announcer is not None
        assert node.handler.timeline == node.fence.timeline == node.announcer.timeline == 1
        node.handler.timeline = node.fence.timeline = node.announcer.timeline = None
        await _until(lambda: node.handler is not None and node.handler.timeline == 1)
        assert node.fence.timeline == 1 and node.role == "primary"
        async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
            res = await db.execute(f"INSERT INTO {table}(body) VALUES ('t')",
                                   await_replication=False)  # fmt: skip
        assert res.via_bus and res.timeline == 1


async def test_a_database_found_on_an_older_timeline_fences_the_node(stack: Any) -> None:
    """The node last knew its database on timeline 7; its next heartbeat finds timeline 1 --
    an old primary behind its address, since a database never goes back a timeline. The node
    is fenced and leaves the write group, rather than serve writes on the old history; its
    pings no longer give a flush position (strong reads and token checks use it)."""
    prefix = f"tl{uuid.uuid4().hex[:8]}"
    async with BusService(bus_settings_for(stack, "syd", prefix=prefix),
                          procedures=procedures) as node:  # fmt: skip
        assert node.handler is not None and node.announcer is not None
        node.handler.timeline = node.fence.timeline = node.announcer.timeline = 7
        await _until(lambda: node.role == "fenced")
        assert node.write_server is None and node.committer is None
        assert "timeline 7" in (node.problem() or "")
        async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
            ping = await db.rpc_region("syd", "writebus.ping")
        # Its database may be a stale primary: its position is not the cluster's.
        assert ping["role"] == "fenced" and ping["in_recovery"] is False
        assert "flush_lsn" not in ping and "flush_lsn_int" not in ping


async def test_a_node_whose_pool_is_all_busy_is_not_reported_down(stack: Any) -> None:
    """Every pooled connection is busy (a pile-up behind a lock, say): the health check's
    query runs on a connection of its own, so /healthz says the database is up -- it used
    to time out on the pool and report it down, and a platform's health check would restart
    a node that was only busy."""
    prefix = f"hz{uuid.uuid4().hex[:8]}"
    async with BusService(bus_settings_for(stack, "syd", prefix=prefix, max_concurrency=2),
                          procedures=procedures) as node:  # fmt: skip
        assert node.pool is not None and node.ops is not None
        held = [await node.pool.getconn() for _ in range(node.pool.max_size)]
        try:
            assert node.pool.get_stats().get("pool_available", 0) == 0
            facts = await node.ops.facts()
            assert facts.database_ok, facts.database_error
        finally:
            for conn in held:
                await node.pool.putconn(conn)


async def test_health_probes_share_one_database_check(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty probes at once on a node whose pool is all busy open one connection of their
    own, not twenty (enough probes filled max_connections), and the verdict answers probes
    for a second; after that a probe checks again."""
    from writebus.bus import ops

    opened = 0
    real_connect = psycopg.AsyncConnection.connect

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return await real_connect(*args, **kwargs)

    prefix = f"hz{uuid.uuid4().hex[:8]}"
    async with BusService(bus_settings_for(stack, "syd", prefix=prefix, max_concurrency=2),
                          procedures=procedures) as node:  # fmt: skip
        assert node.pool is not None and node.ops is not None
        held = [await node.pool.getconn() for _ in range(node.pool.max_size)]
        monkeypatch.setattr(psycopg.AsyncConnection, "connect", counted)
        monkeypatch.setattr(ops, "DATABASE_CHECK_TTL", 0.5, raising=False)
        try:
            node.ops._db_verdict = None  # start-up's own probes may have left one
            facts = await asyncio.gather(*(node.ops.facts() for _ in range(20)))
            assert all(f.database_ok for f in facts) and opened == 1
            assert (await node.ops.facts()).database_ok and opened == 1
            await asyncio.sleep(0.6)
            assert (await node.ops.facts()).database_ok and opened == 2
        finally:
            for conn in held:
                await node.pool.putconn(conn)


async def _until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_idle_replica_heartbeats_without_busy_polling(stack: Any) -> None:
    """Idle, the replica node polls and publishes about once a second (heartbeat), no more."""
    prefix = f"svc{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(stack.nats_url("lax"))
    seen: list[dict[str, Any]] = []

    async def on_msg(msg: Any) -> None:
        seen.append(msgspec.msgpack.decode(msg.data))

    await nc.subscribe(f"{prefix}.lsn.lax", cb=on_msg)
    try:
        async with BusService(bus_settings_for(stack, "lax", prefix=prefix),
                              procedures=procedures) as node:
            assert node.monitor is not None
            await asyncio.sleep(0.2)  # let start-up settle
            polls0, seen0 = node.monitor.polls, len(seen)
            await asyncio.sleep(2.5)
            polls = node.monitor.polls - polls0
            beats = len(seen) - seen0
    finally:
        await nc.close()
    assert 2 <= beats <= 4, beats
    assert polls <= 5, polls  # ~1/s, not a busy loop
    assert all(m["region"] == "lax" and m["in_recovery"] and m["role"] == "replica"
               for m in seen)


async def test_sigterm_drains_in_flight_requests(stack: Any, table: str) -> None:
    """SIGTERM while requests run: every in-flight request finishes and gets its reply."""
    prefix = f"drain{uuid.uuid4().hex[:8]}"
    bus = start_bus(stack, "syd", log_name=f"bus-drain-{prefix}", WRITEBUS_PREFIX=prefix)
    n = 8
    try:
        async with Database(settings_for(stack, "lax", prefix=prefix), retry=NO_RETRY) as db:
            calls = [
                asyncio.create_task(db.call("sleep_then_add", table, f"d{i}", 1.0,
                                            await_replication=False, rpc_timeout=15))
                for i in range(n)
            ]
            deadline = time.monotonic() + 10
            while True:  # wait until all n are inside their transactions on the primary
                with psycopg.connect(stack.primary.url, autocommit=True) as conn:
                    busy = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%'"
                    ).fetchone()[0]
                if busy >= n:
                    break
                assert time.monotonic() < deadline, "requests never started"
                await asyncio.sleep(0.02)
            bus.terminate()
            ids = await asyncio.gather(*calls)
        assert len(set(ids)) == n
        assert await asyncio.to_thread(bus.wait, 15) == 0
        assert primary_rows(stack, f"SELECT count(*) FROM {table} WHERE body LIKE 'd%%'") == \
            [(n,)]
    finally:
        bus.kill()


async def test_applied_ids_expire_with_their_partition(
    stack: Any, buses: Any, table: str
) -> None:
    """Request ids are forgotten after the idempotency window, by dropping whole partitions:
    once maintenance runs past the window, the id's row is gone, and only then would the same
    id be applied again. (The clock is moved forward, rather than waited for: partitions are
    an hour each.)"""
    import datetime

    from writebus.bus import partitions

    async with Database(settings_for(stack, "lax")) as db:
        rid = uuid.uuid4().hex
        stmt = [(f"INSERT INTO {table}(body) VALUES (%s)", [rid])]
        await db.batch(stmt, request_id=rid)
        assert (await db.batch(stmt, request_id=rid)).duplicate
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
        async with await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True) as c:
            dropped = await partitions.maintain(c, 86400.0, now=later)
            await partitions.maintain(c, 86400.0)  # today's partitions again
        assert dropped >= 1
        assert primary_rows(stack, "SELECT 1 FROM writebus.applied WHERE id = %s", [rid]) == []
        again = await db.batch([(f"UPDATE {table} SET n = 1 WHERE body = %s", [rid])],
                               request_id=rid, await_replication=False)
        assert not again.duplicate and again.rowcount == 1


@pytest.mark.parametrize("held", ["ROW EXCLUSIVE", "ACCESS SHARE"])
async def test_maintenance_makes_partitions_beside_a_long_transaction(
    stack: Any, buses: Any, held: str
) -> None:
    """Another session's transaction holds the exactly-once table -- a long write (ROW
    EXCLUSIVE) or an hours-long ``pg_dump`` (ACCESS SHARE) -- and maintenance still makes the
    partitions ahead, at once: attaching one conflicts with neither, so no write ever queues
    behind it. (``CREATE TABLE ... PARTITION OF`` needed ACCESS EXCLUSIVE: maintenance gave up
    at each pass, and behind a dump longer than the two hours made ahead every write would
    have been refused.)"""
    import datetime

    from writebus.bus import partitions

    ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    names = [partitions.partition_name(b[0]) for b in partitions.partition_bounds(ahead)]
    year = 365 * 86400.0  # a window that drops nothing here

    def made() -> list[str]:
        rows = primary_rows(stack, "SELECT c.relname FROM pg_class c JOIN pg_inherits i ON "
                            "i.inhrelid = c.oid WHERE c.relname = ANY(%s)", [names])  # fmt: skip
        return sorted(r[0] for r in rows)

    url = stack.primary.url
    async with await psycopg.AsyncConnection.connect(url) as holder, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as c:  # fmt: skip
        try:
            await holder.execute(f"LOCK TABLE writebus.applied IN {held} MODE")
            await asyncio.wait_for(partitions.maintain(c, year, now=ahead), 10)
            assert made() == sorted(names)
        finally:
            await holder.rollback()
            for name in made():
                await c.execute(f'DROP TABLE IF EXISTS writebus."{name}"')


async def test_the_schema_step_waits_for_a_locked_table_and_says_who_holds_it(
    stack: Any, buses: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's start creates the partitions it needs. While another session's transaction
    holds the table in a mode that excludes attaching one (DDL, ``VACUUM FULL``, an explicit
    ``LOCK TABLE``) it cannot, and waits -- a worker cannot serve writes without them -- but
    within about a second it logs who holds the lock (that session's pid, no query text),
    and it finishes once the transaction ends."""
    import datetime
    import logging

    from writebus.bus import idempotency, partitions

    ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20)
    names = [partitions.partition_name(b[0]) for b in partitions.partition_bounds(ahead)]
    year = 365 * 86400.0

    def made() -> list[str]:
        rows = primary_rows(stack, "SELECT relname FROM pg_class WHERE relname = ANY(%s)",
                            [names])  # fmt: skip
        return sorted(r[0] for r in rows)

    url = stack.primary.url
    caplog.set_level(logging.WARNING, logger="writebus.bus.idempotency")
    async with await psycopg.AsyncConnection.connect(url) as holder, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as c:  # fmt: skip
        try:
            await holder.execute("LOCK TABLE writebus.applied IN SHARE UPDATE EXCLUSIVE MODE")
            await holder.execute("SELECT 'a secret' AS note")
            task = asyncio.create_task(idempotency.ensure_schema(c, year, now=ahead))
            deadline = time.monotonic() + 5
            while "idempotency.schema_waiting" not in caplog.text:
                assert time.monotonic() < deadline, "no warning while the table stayed locked"
                assert not task.done(), "the schema step ended while the table was locked"
                await asyncio.sleep(0.05)
            assert f"'pid': {holder.info.backend_pid}" in caplog.text
            assert "a secret" not in caplog.text
            assert not task.done() and made() == []
            await holder.rollback()
            await asyncio.wait_for(task, 10)
            assert made() == sorted(names)
        finally:
            await holder.rollback()
            for name in made():
                await c.execute(f'DROP TABLE IF EXISTS writebus."{name}"')


async def test_worker_connections_flush_commits(stack: Any) -> None:
    """Even when the database or role sets synchronous_commit=off, worker connections commit
    with a local flush, so the flush LSN read after COMMIT covers the commit record."""
    prefix = f"sc{uuid.uuid4().hex[:8]}"
    url = make_conninfo(stack.primary.url, options="-c synchronous_commit=off")
    settings = bus_settings_for(stack, "syd", prefix=prefix, primary_database_url=url,
                            database_url=url)
    with psycopg.connect(url) as probe:
        assert probe.execute("SHOW synchronous_commit").fetchone() == ("off",)
    async with BusService(settings, procedures=procedures) as node:
        assert node.pool is not None
        async with node.pool.connection() as conn:
            cur = await conn.execute("SHOW synchronous_commit")
            assert await cur.fetchone() == ("local",)
