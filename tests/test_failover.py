"""Failover: the replica region's standby is promoted and its bus node takes over writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import nats
import psycopg
import pytest

import writebus
from tests.support.stack import TEST_DELAY_MS, bus_env, http_url, settings_for, start_bus
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.ports import LOCALHOST, free_port
from writebus.bus.embedded.postgres import PostgresServer
from writebus.bus.embedded.stack import Stack
from writebus.client import Database, RetryPolicy, SyncDatabase
from writebus.client.errors import LostInFailoverError, Outcome, ReplicationTimeoutError
from writebus.client.lsn import format_lsn, parse_lsn
from writebus.client.protocol import (
    MSGPACK,
    LsnUpdate,
    decode,
    update_fork,
    update_primary_fork,
)
from writebus.client.tokens import make_token


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Stack]:
    """A stack of this module's own: promotion cannot be undone."""
    with Stack(one_way_delay_ms=TEST_DELAY_MS) as s:
        yield s


async def test_promoted_replica_takes_over_writes(own_stack: Stack) -> None:
    """Primary down, lax standby promoted: the lax bus node switches to the primary role and
    serves writes; lax clients write and read their writes again, waiting on the new
    primary's own position. When the old primary comes back as a primary (split brain), its
    bus nodes are fenced -- the running one leaves the write group, a new one never joins --
    and no write lands on it."""
    stack = own_stack
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE fo (id bigserial PRIMARY KEY, body text)")
    stack.wait_replica_caught_up(10)
    buses = [start_bus(stack, r, log_name=f"fo-bus-{r}") for r in ("syd", "lax")]
    retry = RetryPolicy(no_worker_patience=10.0)
    try:
        async with Database(
            settings_for(stack, "lax", rpc_timeout=20, replication_timeout=10), retry=retry
        ) as db, Database(settings_for(stack, "syd", rpc_timeout=20), retry=retry) as syd_db:
            before = await db.execute("INSERT INTO fo(body) VALUES ('before') RETURNING id")
            assert before.via_bus
            stack.primary.stop("fast")
            stack.replica.promote()
            assert await db.fetchval("SELECT pg_is_in_recovery()") is False
            deadline = time.monotonic() + 20
            while '"event": "bus.promoted"' not in buses[1].log_path.read_text():
                assert time.monotonic() < deadline, buses[1].log_tail()
                await asyncio.sleep(0.05)
            res = await db.execute("INSERT INTO fo(body) VALUES ('after') RETURNING id")
            assert res.lsn is not None and res.region == "lax"
            # An app in syd, whose local primary is gone, writes through the bus to the new
            # primary: no restart, no change to its environment.
            moved = await syd_db.execute("INSERT INTO fo(body) VALUES ('from-syd') RETURNING id")
            assert moved.via_bus and moved.region == "lax"
            row = await db.fetchrow("SELECT body FROM fo WHERE id = %s", [res.rows[0][0]])
            assert row == ("after",)
            assert db.tracker is not None and db.tracker.waiting == 0

            # The old primary comes back -- as a primary, on the old timeline: split brain,
            # unless its bus nodes are fenced.
            stack.primary.start()
            deadline = time.monotonic() + 20
            while '"event": "bus.fenced"' not in buses[0].log_path.read_text():
                assert time.monotonic() < deadline, buses[0].log_tail()
                await asyncio.sleep(0.05)
            health = json.loads(_get(f"{http_url(buses[0])}/healthz"))
            assert health["status"] == "fail" and "fenced" in health["checks"]["role"]["error"]
            # A node started afresh on the stale primary is fenced before it serves anything.
            late = stack.start_bus("syd", env=bus_env(stack, "syd"), log_name="fo-bus-syd-late")
            buses.append(late)
            late.wait_ready(30)  # ready, fenced: it never subscribes to writes
            for i in range(20):
                await db.execute("INSERT INTO fo(body) VALUES (%s)", [f"after-{i}"])
            assert '"event": "bus.fenced"' in late.log_path.read_text()
            served_writes = [
                line for bus in (buses[0], late) for line in bus.log_path.read_text().splitlines()
                if '"event": "request"' in line and '.write"' in line and "after-" not in line
                and '"outcome": "ok"' in line and time.monotonic()
            ]
            old = psycopg.connect(stack.primary.url, autocommit=True)
            with old:
                rows = old.execute("SELECT body FROM fo ORDER BY id").fetchall()
                assert rows == [("before",)], rows
            assert await db.fetchval("SELECT count(*) FROM fo") == 23
            assert len(served_writes) <= 1  # at most 'before', served before the failover
    finally:
        for bus in buses:
            bus.stop(10)


async def test_a_take_over_that_fails_is_tried_again_until_it_serves() -> None:
    """A promoted node whose take-over fails -- here its schema step, on an object in the way
    of the exactly-once table -- says so in its log and in ``/healthz``, and tries again: once
    the object is gone it serves the region's writes, rather than stay "starting", with every
    write refused, until someone restarts it.

    Meanwhile nothing announces the promotion. A tracker's fallback then reads the promoted
    database, whose position says nothing of what the old primary committed past the fork: a
    wait for such a write fails as lost (an unknown outcome), never as replicated. The
    database restarts before the take-over succeeds (its replay position is gone then); the
    node still announces the fork it saw at the promotion, which then decides."""
    with Stack(one_way_delay_ms=TEST_DELAY_MS) as stack:
        with psycopg.connect(stack.primary.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE take_over (id bigserial PRIMARY KEY, body text)")
            conn.execute("CREATE SCHEMA writebus; CREATE VIEW writebus.applied AS SELECT 1 AS x")
        stack.wait_replica_caught_up(10)
        bus = start_bus(stack, "lax", log_name="take-over-bus-lax")
        nc = await nats.connect(stack.nats_url("lax"))
        announced = await _primary_announcements(nc, "writebus.lsn.lax")
        try:
            stack.primary.stop("fast")
            stack.replica.promote()
            fork = _fork(stack.replica, 2)
            # Starting fails /healthz too (the fence wait first): wait for the failed try.
            health = await _health_until(
                bus, lambda h: "promoted" in h["checks"].get("role", {}).get("error", "")
            )
            assert health["role"] == "starting" and health["status"] == "fail", health
            assert "promoted, but not serving writes yet" in health["checks"]["role"]["error"]
            assert "applied" in health["checks"]["role"]["error"]
            failed = [
                json.loads(line) for line in bus.log_path.read_text().splitlines()
                if '"event": "bus.take_over_failed"' in line
            ]  # fmt: skip
            assert failed[0]["attempt"] == 1 and "applied" in failed[0]["error"], failed
            lax = settings_for(stack, "lax", rpc_timeout=10)
            async with Database(lax, retry=RetryPolicy(no_worker_patience=10.0)) as db:
                assert db.tracker is not None
                lost = asyncio.create_task(db.wait_for_lsn(fork + 1, 120, 1))
                for _ in range(30):  # through the next tries, each listening for a rival first
                    sample = json.loads(_get(f"{http_url(bus)}/healthz"))
                    assert sample["status"] == "fail", sample
                    await asyncio.sleep(0.1)
                assert db.tracker.fallback_polls > 0
                with pytest.raises(LostInFailoverError):
                    await asyncio.wait_for(lost, 10)
                assert db.forks == {}  # not announced: not known
                stack.replica.restart()
                assert stack.replica.execute("SELECT pg_last_wal_replay_lsn()") == [(None,)]
                stack.replica.execute("DROP VIEW writebus.applied")
                health = await _health_until(bus, lambda h: h["role"] == "primary")
                assert health["status"] == "ok", health
                await _until_true(lambda: db.forks == {2: fork})
                with pytest.raises(LostInFailoverError) as info:
                    await db.wait_for_lsn(fork + 1, 10, 1)
                assert info.value.switch_lsn == fork
                assert await db.wait_for_lsn(fork, 10, 1) >= fork  # it survived
                # The replica monitor saw the same fork at the promotion (the node announces
                # it when its role may not read the history file).
                promoted = [json.loads(line) for line in bus.log_path.read_text().splitlines()
                            if '"event": "monitor.promoted"' in line]  # fmt: skip
                assert [p["fork"] for p in promoted] == [format_lsn(fork)]
                assert announced and {(u.timeline, update_fork(u)) for u in announced} == {
                    (2, fork)
                }
                res = await db.execute("INSERT INTO take_over(body) VALUES ('after') RETURNING id")
                assert res.via_bus and res.region == "lax" and res.replicated
                assert await db.fetchval("SELECT body FROM take_over") == "after"
        finally:
            await nc.close()
            bus.stop(10)


async def test_a_take_over_gives_up_once_its_database_is_a_standby_again() -> None:
    """A promoted node's take-over fails (an object in the way of the schema step), and the
    operator rebuilds its database as a standby of the primary, which never went away. The
    node stops trying to become the primary: it is a replica node again, healthy, and its
    monitor broadcasts the standby's replay -- rather than fail ``/healthz`` and retry for
    good."""
    with Stack(one_way_delay_ms=TEST_DELAY_MS) as stack:
        with psycopg.connect(stack.primary.url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA writebus; CREATE VIEW writebus.applied AS SELECT 1 AS x")
        stack.wait_replica_caught_up(10)
        bus = start_bus(stack, "lax", log_name="abandon-bus-lax")
        nc = await nats.connect(stack.nats_url("lax"))
        replayed: list[LsnUpdate] = []

        async def heard(msg: Any) -> None:
            upd = decode(msg.data, LsnUpdate, MSGPACK)
            if upd.role == "replica" and upd.in_recovery:
                replayed.append(upd)

        try:
            stack.replica.promote()
            health = await _health_until(bus, lambda h: h["status"] == "fail")
            assert health["role"] == "starting", health
            stack.replica.stop("fast")
            stack.replica.discard()
            stack.replica.init_replica(LOCALHOST, stack.ports.wan_replication)
            stack.replica.start()
            health = await _health_until(bus, lambda h: h["role"] == "replica")
            assert health["status"] == "ok", health
            log_text = bus.log_path.read_text()
            assert '"event": "bus.take_over_failed"' in log_text
            assert '"event": "bus.take_over_abandoned"' in log_text
            await nc.subscribe("writebus.lsn.lax", cb=heard)
            with psycopg.connect(stack.primary.url, autocommit=True) as conn:
                conn.execute("CREATE TABLE after_abandon (id int)")
                (flushed,) = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
            await _until_true(lambda: any(u.lsn_int >= parse_lsn(flushed) for u in replayed))
            samples = [json.loads(_get(f"{http_url(bus)}/healthz")) for _ in range(5)]
            assert {(h["status"], h["role"]) for h in samples} == {("ok", "replica")}
        finally:
            await nc.close()
            bus.stop(10)


async def _until_true(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def _primary_announcements(nc: Any, subject: str) -> list[LsnUpdate]:
    """The primary announcements heard on ``subject`` from now on (a list that fills)."""
    announced: list[LsnUpdate] = []

    async def heard(msg: Any) -> None:
        upd = decode(msg.data, LsnUpdate, MSGPACK)
        if upd.role == "primary":
            announced.append(upd)

    await nc.subscribe(subject, cb=heard)
    return announced


def _fork(server: PostgresServer, timeline: int) -> int:
    """Where Postgres says ``timeline`` began on ``server``: its history file's switchpoint."""
    history = server.execute(f"SELECT pg_read_file('pg_wal/{timeline:08X}.history')")
    return parse_lsn(history[0][0].split()[1])


async def _stop_receiving(server: PostgresServer) -> None:
    """Cut ``server``'s WAL stream, and wait until its receiver is gone."""
    server.execute("ALTER SYSTEM SET primary_conninfo = ''")
    server.execute("SELECT pg_reload_conf()")
    await _until_true(lambda: not server.execute("SELECT count(*) FROM pg_stat_wal_receiver")[0][0])


async def test_a_write_a_failover_lost_no_longer_holds_the_session_back() -> None:
    """The lax standby stops receiving WAL. A write through the bus then commits on the syd
    primary 5 MB past what lax received, and the app does not wait for it, which raises its
    session to the write's position; so does a second write, whose replay wait times out.
    syd is lost and lax promoted, and the app writes again,
    on the new timeline, below that position. The session's reads -- async and sync -- no
    longer count what the dead timeline committed past the promotion: they run at once,
    rather than wait for the lost position until they time out, and see the second write,
    which the session and the Database's newest write still stand at. Waiting for the lost
    write says the failover lost it."""
    with Stack(one_way_delay_ms=TEST_DELAY_MS) as stack:
        with psycopg.connect(stack.primary.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE lost_write (id bigserial PRIMARY KEY, body text)")
        stack.wait_replica_caught_up(10)
        buses = [start_bus(stack, r, log_name=f"lost-bus-{r}") for r in ("syd", "lax")]
        lax = settings_for(stack, "lax", rpc_timeout=20, replication_timeout=2)
        sdb = SyncDatabase(lax)
        await asyncio.to_thread(sdb.open)
        nc = await nats.connect(stack.nats_url("lax"))
        announced = await _primary_announcements(nc, "writebus.lsn.lax")
        try:
            async with Database(lax, retry=RetryPolicy(no_worker_patience=10.0)) as db:
                kept = await db.execute("INSERT INTO lost_write(body) VALUES ('kept')")
                await _stop_receiving(stack.replica)
                with writebus.session() as s:
                    lost = await db.execute(
                        "INSERT INTO lost_write(body) "
                        "SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
                        await_replication=False,
                    )
                    assert lost.lsn is not None and s.lsn == lost.lsn
                    with pytest.raises(ReplicationTimeoutError) as late:  # waited, not replayed
                        await db.execute("INSERT INTO lost_write(body) VALUES ('late')")
                    assert late.value.outcome is Outcome.APPLIED
                    assert late.value.timeline == lost.timeline
                    assert s.lsn == late.value.lsn and late.value.lsn > lost.lsn
                    stack.primary.stop("fast")
                    stack.replica.promote()
                    # A write on the new timeline: its position is below the lost one's.
                    after = await db.execute("INSERT INTO lost_write(body) VALUES ('after')")
                    assert await db.fetchval("SELECT count(*) FROM lost_write") == 2
                    assert after.lsn is not None and s.lsn == after.lsn < lost.lsn
                    with pytest.raises(LostInFailoverError) as info:
                        await db.wait_for_lsn(lost.lsn, 20, lost.timeline)
                    # The fork, as the promoted node announced it: where Postgres itself
                    # says the new timeline begins.
                    fork = _fork(stack.replica, 2)
                    assert db.forks == {2: fork} and after.timeline == 2
                    # Every announcement of the promoted node, from its first, says so.
                    assert announced and {(u.timeline, update_fork(u)) for u in announced} == {
                        (2, fork)
                    }
                    assert info.value.switch_lsn == fork
                    assert kept.lsn is not None and kept.lsn <= fork < after.lsn
                assert db.session_token() == make_token(after.lsn)  # the Database's own

                def sync_read() -> tuple[Any, int | None]:
                    with writebus.session() as s2:
                        s2.saw(lost.lsn, lost.timeline, sdb.database)  # as a write records it
                        return sdb.fetchval("SELECT count(*) FROM lost_write"), s2.lsn

                assert await asyncio.to_thread(sync_read) == (2, fork)
        finally:
            await nc.close()
            await asyncio.to_thread(sdb.close)
            for bus in buses:
                bus.stop(10)


def _another_standby(stack: Stack, name: str) -> PostgresServer:
    """Another standby of the syd primary (streaming directly), started."""
    primary = stack.primary
    standby = PostgresServer(name=f"pg-{name}", datadir=stack.base_dir / "pg" / name,
                             port=free_port(), bindir=primary.bindir, run_as=primary.run_as,
                             fsync=stack.fsync)  # fmt: skip
    standby.init_replica(LOCALHOST, primary.port)
    standby.start()
    return standby


def _start_standby_bus(
    stack: Stack, standby: PostgresServer, region: str, replica_id: str
) -> BusProcess:
    """A bus node of ``region`` on ``standby``; a region the stack does not have (fra) shares
    lax's NATS server (regions are subject names; the servers form one cluster)."""
    env = {"FLY_REGION": region, "DATABASE_URL": standby.url,
           "PRIMARY_DATABASE_URL": standby.url, "WRITEBUS_REPLICA_ID": replica_id}  # fmt: skip
    home = region if region in stack.regions else "lax"
    return start_bus(stack, home, log_name=f"bus-{replica_id}", **env)


@contextlib.asynccontextmanager
async def _with_another_standby(
    table: str, name: str, region: str, replica_id: str, heard_in: str
) -> AsyncIterator[tuple[Stack, PostgresServer, list[BusProcess], list[LsnUpdate]]]:
    """A stack of its own with ``table``, a third database -- ``name``, a standby of the syd
    primary, in ``region`` -- and a bus node on each database; and the relays of timeline 2
    heard on ``heard_in``'s subject from then on."""
    with Stack(one_way_delay_ms=TEST_DELAY_MS) as stack:
        with psycopg.connect(stack.primary.url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, body text)")
        standby = _another_standby(stack, name)
        stack.wait_replica_caught_up(10)
        buses = [start_bus(stack, "lax", log_name=f"{table}-bus-lax"),
                 start_bus(stack, "syd", log_name=f"{table}-bus-syd"),
                 _start_standby_bus(stack, standby, region, replica_id)]  # fmt: skip
        nc = await nats.connect(stack.nats_url("lax"))
        try:
            yield stack, standby, buses, await _relays(nc, heard_in)
        finally:
            await nc.close()
            for bus in buses:
                bus.stop(10)
            standby.stop("fast")


async def _relays(nc: Any, region: str) -> list[LsnUpdate]:
    """The broadcasts of ``region``'s standbys that relay timeline 2, from now on."""
    relayed: list[LsnUpdate] = []

    async def heard(msg: Any) -> None:
        upd = decode(msg.data, LsnUpdate, MSGPACK)
        if upd.role == "replica" and upd.primary_timeline == 2:
            relayed.append(upd)

    await nc.subscribe(f"writebus.lsn.{region}", cb=heard)
    return relayed


def _follow(server: PostgresServer, upstream: PostgresServer) -> None:
    """Point ``server``'s WAL stream at ``upstream`` (takes effect on reload)."""
    server.execute("ALTER SYSTEM SET primary_conninfo = "
                   f"'host={LOCALHOST} port={upstream.port} user=postgres'")  # fmt: skip
    server.execute("SELECT pg_reload_conf()")


async def _until_logged(bus: BusProcess, event: str) -> None:
    deadline = time.monotonic() + 30
    while f'"event": "{event}"' not in bus.log_path.read_text():
        assert time.monotonic() < deadline, bus.log_tail()
        await asyncio.sleep(0.05)


async def test_a_promotion_in_another_region_fails_lax_waits_for_what_it_lost() -> None:
    """syd has a second standby with its own bus node. Both standbys stop receiving WAL, and
    a write through the bus commits on the syd primary 5 MB past what they received; a lax
    app waits for it. The syd primary is lost, syd's standby promoted, and lax's standby
    pointed at it: lax follows timeline 2, which then passes the write's position. lax's
    clients never hear syd's announcements; lax's replica monitor relays the promotion and its
    fork, so the wait fails as lost at the fork. Before, it was released as replicated when
    lax passed its position on timeline 2, and a read then missed the write."""
    async with _with_another_standby("far_lost", "syd-2", "syd", "syd-2", "lax") as (
        stack, standby, buses, relayed
    ):
        lax = settings_for(stack, "lax", rpc_timeout=20, replication_timeout=20)
        async with Database(lax, retry=RetryPolicy(no_worker_patience=20.0)) as db:
            kept = await db.execute("INSERT INTO far_lost(body) VALUES ('kept')")
            await _until_true(lambda: standby.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [format_lsn(kept.lsn or 0)]
            )[0][0])  # fmt: skip
            await _stop_receiving(stack.replica)  # lax first: syd-2 has all lax has
            await _stop_receiving(standby)
            lost = await db.execute(
                "INSERT INTO far_lost(body) SELECT repeat('x', 1000) "
                "FROM generate_series(1, 5000)",
                await_replication=False,
            )
            assert lost.lsn is not None and lost.timeline == 1
            wait = asyncio.create_task(db.wait_for_lsn(lost.lsn, 60, lost.timeline))
            stack.primary.stop("fast")
            standby.promote()
            await _until_logged(buses[2], "bus.promoted")
            # lax follows the new primary, on timeline 2, past the lost write's position.
            _follow(stack.replica, standby)
            after = await db.execute(
                "INSERT INTO far_lost(body) SELECT repeat('y', 1000) "
                "FROM generate_series(1, 6000)"
            )
            assert after.timeline == 2 and after.lsn is not None and after.lsn > lost.lsn
            with pytest.raises(LostInFailoverError) as info:  # not released as replicated
                await asyncio.wait_for(wait, 5)
            fork = _fork(standby, 2)
            assert info.value.switch_lsn == fork and db.forks == {2: fork}
            assert kept.lsn is not None and kept.lsn <= fork < lost.lsn
            assert relayed and {(u.region, update_primary_fork(u)) for u in relayed} == {
                ("lax", fork)
            }
            assert await db.fetchval("SELECT count(*) FROM far_lost WHERE body = 'kept'") == 1
            assert await db.fetchval("SELECT count(*) FROM far_lost") == 6001  # no 'x' rows
            with pytest.raises(LostInFailoverError):  # and at once, for a wait begun now
                await db.wait_for_lsn(lost.lsn, 5, lost.timeline)


async def test_a_promotion_outside_the_primary_region_reaches_a_third_regions_clients() -> None:
    """The lax standby is promoted -- outside the primary region (syd), so it announces on
    lax's subject, not syd's. A third region, fra, has a standby of its own, pointed at lax
    after the promotion, and a fra app waits for a write that lax never received. fra's
    node hears every region's announcements and relays the promotion, so the wait fails as
    lost at the fork, and its lag counts from the new primary's positions. (fra's monitor
    listened to syd's subject only: the wait was released as replicated once fra's standby
    passed its position on timeline 2, and the lag counted from the dead primary's last.)"""
    async with _with_another_standby("lax_took", "fra", "fra", "fra-1", "fra") as (
        stack, standby, buses, relayed
    ):
        lax = settings_for(stack, "lax", rpc_timeout=20, replication_timeout=20)
        fra = settings_for(stack, "lax").replace(region="fra", database_url=standby.url)
        async with Database(lax, retry=RetryPolicy(no_worker_patience=20.0)) as db, \
                Database(fra) as fra_db:  # fmt: skip
            kept = await db.execute("INSERT INTO lax_took(body) VALUES ('kept')")
            assert await fra_db.wait_for_lsn(kept.lsn or 0, 10, kept.timeline)
            await _stop_receiving(standby)  # fra first: lax has all fra has
            await _stop_receiving(stack.replica)
            lost = await db.execute(
                "INSERT INTO lax_took(body) SELECT repeat('x', 1000) "
                "FROM generate_series(1, 5000)",
                await_replication=False,
            )
            assert lost.lsn is not None and lost.timeline == 1
            wait = asyncio.create_task(fra_db.wait_for_lsn(lost.lsn, 60, lost.timeline))
            stack.primary.stop("fast")
            stack.replica.promote()
            await _until_logged(buses[0], "bus.promoted")
            _follow(standby, stack.replica)
            after = await db.execute(
                "INSERT INTO lax_took(body) SELECT repeat('y', 1000) "
                "FROM generate_series(1, 6000)"
            )
            assert after.timeline == 2 and after.lsn is not None and after.lsn > lost.lsn
            assert await fra_db.wait_for_lsn(after.lsn, 30, after.timeline) >= after.lsn
            with pytest.raises(LostInFailoverError) as info:  # not released as replicated
                await asyncio.wait_for(wait, 5)
            fork = _fork(stack.replica, 2)
            assert info.value.switch_lsn == fork and fra_db.forks == {2: fork}
            assert relayed and {(u.replica_id, update_primary_fork(u)) for u in relayed} == {
                ("fra-1", fork)
            }
            assert await fra_db.fetchval("SELECT count(*) FROM lax_took") == 6001
            # fra's lag counts from the new primary's positions, not the dead one's last.
            await _until_true(lambda: any((u.primary_lsn_int or 0) >= (after.lsn or 0)
                                          for u in relayed))  # fmt: skip


async def _health_until(bus: BusProcess, done: Callable[[dict[str, Any]], bool]) -> Any:
    """The node's ``/healthz`` body, once ``done`` says so (within 60 s)."""
    deadline = time.monotonic() + 60
    while not done(health := json.loads(_get(f"{http_url(bus)}/healthz"))):
        assert time.monotonic() < deadline, (health, bus.log_tail())
        await asyncio.sleep(0.05)
    return health


def _get(url: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as err:
        return str(err.read().decode())


