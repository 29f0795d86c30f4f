"""The LSN tracker against a real nats-server and replica."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import nats
import pytest

from tests.support.scheduled import record_call_soon
from tests.support.stack import settings_for
from writebus.client import wakeup
from writebus.client.errors import ReplicationTimeoutError
from writebus.client.protocol import encode, lsn_update
from writebus.client.settings import Settings
from writebus.client.tracker import LsnTracker
from writebus.client.trackers import acquire_tracker, release_tracker


def _update(lsn: int, *, replica_id: str = "r1", role: str = "replica",
            in_recovery: bool = True, region: str = "lax") -> bytes:
    return encode(lsn_update(region=region, replica_id=replica_id, lsn=lsn, role=role,
                             in_recovery=in_recovery))


@pytest.fixture
async def isolated(stack: Any) -> Any:
    """A tracker on a private prefix (no bus publishes there) and a publisher connection. It
    does not probe the replica: the tests' positions are made up, far below the real one's.
    Once a test has broadcast, the fallback does not read the real replica either: broadcasts
    count as fresh for a minute (not 2.5 s, which a loaded machine can take between two)."""
    prefix = f"trk{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack, "lax", prefix=prefix)
    nc = await nats.connect(stack.nats_url("lax"))
    tracker = LsnTracker(settings, nc, probe=False, stale_after=60)
    await tracker.start()
    pub = await nats.connect(stack.nats_url("lax"))
    try:
        yield tracker, pub, f"{prefix}.lsn.lax"
    finally:
        await pub.close()
        await tracker.close()
        await nc.close()


async def _wait_until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_waiters_wake_in_order_on_broadcasts(isolated: Any) -> None:
    """A broadcast wakes exactly the waiters it satisfies; later ones wait for later news."""
    tracker, pub, subject = isolated
    await pub.publish(subject, _update(100))
    await _wait_until(lambda: tracker.replayed == 100)
    low = asyncio.create_task(tracker.wait_for(150, timeout=5))
    high = asyncio.create_task(tracker.wait_for(300, timeout=5))
    await _wait_until(lambda: tracker.waiting == 2)
    await pub.publish(subject, _update(200))
    assert await low == 200
    assert not high.done() and tracker.waiting == 1
    await pub.publish(subject, _update(300))
    assert await high == 300
    assert tracker.waiting == 0 and tracker.heap_size == 0


async def test_already_replayed_answers_at_once(isolated: Any) -> None:
    """Waiting for an LSN already replayed returns without registering a waiter."""
    tracker, pub, subject = isolated
    await pub.publish(subject, _update(500))
    await _wait_until(lambda: tracker.replayed == 500)
    assert await tracker.wait_for(400, timeout=0.001) == 500
    assert tracker.heap_size == 0


async def test_bad_and_foreign_broadcasts_are_ignored(isolated: Any) -> None:
    """Garbage, another region's primary announcements and a replica-role update not in
    recovery (a promoted standby's frozen replay LSN) do not move the position."""
    tracker, pub, subject = isolated
    await pub.publish(subject, b"\xc1garbage")
    await pub.publish(subject, _update(10**9, role="primary", in_recovery=False, region="syd"))
    await pub.publish(subject, _update(10**9, in_recovery=False))
    await pub.publish(subject, _update(42))
    await _wait_until(lambda: tracker.replayed == 42)
    assert tracker.updates_received == 1


async def test_after_failover_the_regions_own_primary_counts(isolated: Any) -> None:
    """Once this region's database was promoted, its node announces role=primary on this
    region's subject: its flush position is what the local database holds, so it releases
    waiters like replay progress did."""
    tracker, pub, subject = isolated
    # Far above the real replica, which the fallback poll reads while nothing is broadcast.
    high = 2**62
    waiter = asyncio.create_task(tracker.wait_for(high + 5000, timeout=5))
    await _wait_until(lambda: tracker.waiting == 1)
    await pub.publish(
        subject, _update(high + 6000, role="primary", in_recovery=False, replica_id="p")
    )
    assert await waiter == high + 6000


async def test_a_node_promoted_beside_a_standby_reader_is_not_followed(
    isolated: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """This tracker's own database is the stack's lax replica, a real standby. Node y of lax
    announces itself promoted onto timeline 2: the tracker asks its database, finds a
    standby, and keeps the region's minimum -- y's flush position does not release a wait
    that replica r has not replayed (a read here would miss the write); r's broadcast does."""
    tracker, pub, subject = isolated
    caplog.set_level(logging.INFO, logger="writebus.client.tracker")
    high = 2**62
    await pub.publish(subject, _update(high, replica_id="r"))
    await _wait_until(lambda: tracker.replayed == high)
    waiter = asyncio.create_task(tracker.wait_for(high + 5000, timeout=5, timeline=2))
    promoted = lsn_update(region="lax", replica_id="y", lsn=high + 6000, role="primary",
                          in_recovery=False, timeline=2, fork_lsn=high - 10)  # fmt: skip
    await pub.publish(subject, encode(promoted))
    await _wait_until(lambda: "node=y timeline=2 followed=False" in caplog.text)
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await pub.publish(subject, _update(high + 5500, replica_id="r"))
    assert await asyncio.wait_for(waiter, 5) == high + 5500


async def test_replication_timeout_carries_lsn(isolated: Any) -> None:
    """A wait that is never satisfied raises ReplicationTimeoutError with the LSN, and cleans up."""
    tracker, pub, subject = isolated
    await pub.publish(subject, _update(10))
    await _wait_until(lambda: tracker.replayed == 10)
    t0 = time.monotonic()
    with pytest.raises(ReplicationTimeoutError) as info:
        await tracker.wait_for(10**6, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 3.0  # ends at the timeout, does not hang
    assert info.value.lsn == 10**6 and info.value.replayed == 10
    assert "committed" in str(info.value)
    assert tracker.waiting == 0 and tracker.heap_size == 0


async def test_each_waiter_times_out_at_its_own_deadline(isolated: Any) -> None:
    """One timer serves every deadline: a later waiter with a shorter timeout still ends first,
    a cancelled one leaves nothing, and a released one never times out afterwards."""
    tracker, pub, subject = isolated
    await pub.publish(subject, _update(10))
    await _wait_until(lambda: tracker.replayed == 10)
    t0 = time.monotonic()
    slow = asyncio.create_task(tracker.wait_for(10**6, timeout=1.0))
    released = asyncio.create_task(tracker.wait_for(20, timeout=0.2))
    cancelled = asyncio.create_task(tracker.wait_for(10**6, timeout=0.1))
    await _wait_until(lambda: tracker.waiting == 3)
    fast = asyncio.create_task(tracker.wait_for(10**6, timeout=0.3))
    await pub.publish(subject, _update(30))
    assert await released == 30
    cancelled.cancel()
    with pytest.raises(ReplicationTimeoutError) as first:
        await fast
    fast_at = time.monotonic() - t0
    assert 0.3 <= fast_at < 0.9 and not slow.done() and first.value.lsn == 10**6
    with pytest.raises(ReplicationTimeoutError):
        await slow
    assert time.monotonic() - t0 >= 1.0
    assert cancelled.cancelled()
    assert tracker.waiting == 0 and tracker.heap_size == 0


async def test_ten_thousand_waiters_released_by_one_broadcast(isolated: Any) -> None:
    """10,000 concurrent waiters are all woken by one broadcast, none left behind."""
    tracker, pub, subject = isolated
    await pub.publish(subject, _update(100))  # heard: no fallback reads of the real replica
    await _wait_until(lambda: tracker.replayed == 100)
    waits = [asyncio.create_task(tracker.wait_for(1000 + i, timeout=30)) for i in range(10_000)]
    await _wait_until(lambda: tracker.waiting == 10_000)
    await pub.publish(subject, _update(5000))
    await _wait_until(lambda: tracker.waiting == 10_000 - 4001)
    await pub.publish(subject, _update(20_000))
    results = await asyncio.gather(*waits)
    assert results.count(5000) == 4001 and results.count(20_000) == 5999
    assert tracker.waiting == 0 and tracker.heap_size == 0


async def test_one_broadcast_resumes_its_waiters_from_one_callback(
    isolated: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiters a broadcast releases are resumed by one event-loop callback
    (:mod:`writebus.client.wakeup`), not one handle each."""
    tracker, pub, subject = isolated
    await pub.publish(subject, _update(100))  # heard: no fallback reads of the real replica
    await _wait_until(lambda: tracker.replayed == 100)
    waits = [asyncio.create_task(tracker.wait_for(1000 + i, timeout=30)) for i in range(100)]
    await _wait_until(lambda: tracker.waiting == 100)
    scheduled = record_call_soon(asyncio.get_running_loop(), monkeypatch)
    await pub.publish(subject, _update(5000))
    results = await asyncio.gather(*waits)
    monkeypatch.undo()
    assert results == [5000] * 100
    assert scheduled.count(wakeup._resume) == 1


async def test_replica_id_filter(stack: Any) -> None:
    """With WRITEBUS_REPLICA_ID set, only that replica's broadcasts count."""
    prefix = f"trk{uuid.uuid4().hex[:8]}"
    pub = await nats.connect(stack.nats_url("lax"))
    tracker = LsnTracker(settings_for(stack, "lax", prefix=prefix, replica_id="mine"), pub)
    await tracker.start()
    try:
        await pub.publish(f"{prefix}.lsn.lax", _update(999, replica_id="other"))
        await pub.publish(f"{prefix}.lsn.lax", _update(7, replica_id="mine"))
        await _wait_until(lambda: tracker.replayed == 7)
    finally:
        await pub.close()
        await tracker.close()


async def test_fallback_reads_the_replica_when_nobody_broadcasts(stack: Any) -> None:
    """Without any progress broadcasts the tracker polls its own database and still answers."""
    settings = settings_for(stack, "lax", prefix=f"trk{uuid.uuid4().hex[:8]}")
    nc = await nats.connect(stack.nats_url("lax"))
    tracker = LsnTracker(settings, nc)
    await tracker.start()
    try:
        import psycopg

        with psycopg.connect(stack.primary.url, autocommit=True) as conn:
            lsn_text = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        from writebus.client.lsn import parse_lsn

        replayed = await tracker.wait_for(parse_lsn(lsn_text), timeout=5)
        assert replayed >= parse_lsn(lsn_text)
        assert tracker.fallback_polls > 0 and tracker.updates_received == 0
    finally:
        await tracker.close()
        await nc.close()


async def test_one_tracker_per_process_and_database(stack: Any) -> None:
    """acquire_tracker shares one started tracker per (region, database); the last release
    closes it."""
    settings: Settings = settings_for(stack, "lax", prefix=f"trk{uuid.uuid4().hex[:8]}")
    nc = await nats.connect(stack.nats_url("lax"))
    a = await acquire_tracker(settings, nc)
    b = await acquire_tracker(settings, nc)
    other = await acquire_tracker(settings.replace(replica_id="x"), nc)
    try:
        assert a is b and a is not other
    finally:
        await release_tracker(b)
        assert not a._closed
        await release_tracker(a)
        assert a._closed
        await release_tracker(other)
        await nc.close()


async def test_the_server_has_the_subscription_when_start_returns(stack: Any) -> None:
    """start() makes a round trip after subscribing: when it returns, the server has the
    subscription (a broadcast sent from elsewhere right after can still, rarely, miss it; see
    the comment in start()). The server is asked from this very loop step, blocking it:
    nats-py's flusher has had no chance to send anything since."""
    nc = await nats.connect(stack.nats_url("lax"))
    try:
        for _ in range(5):
            prefix = f"trk{uuid.uuid4().hex[:8]}"
            tracker = LsnTracker(settings_for(stack, "lax", prefix=prefix), nc, probe=False)
            await tracker.start()
            try:
                subz = stack.nats["lax"].monitor(f"subsz?subs=1&test={prefix}.lsn.lax")
                listed = [s["subject"] for s in subz.get("subscriptions_list") or []]
                assert listed == [f"{prefix}.lsn.lax"]
            finally:
                await tracker.close()
    finally:
        await nc.close()


async def test_closing_wakes_waiters_with_an_error(isolated: Any) -> None:
    """Closing the tracker fails pending waits instead of leaving them hanging."""
    from writebus.client.errors import TrackerError

    tracker, _, _ = isolated
    w = asyncio.create_task(tracker.wait_for(10**12, timeout=30))
    await _wait_until(lambda: tracker.waiting == 1)
    await tracker.close()
    with pytest.raises(TrackerError):
        await w


async def _the_silence_warning(stack: Any, caplog: Any, **env: str) -> Any:
    """The one silence warning of a lax client of the real stack with ``env`` changed."""
    from writebus.client.db import Database

    with caplog.at_level(logging.WARNING, logger="writebus.client.tracker"):
        async with Database(Settings.from_env({**stack.env("lax"), **env})) as db:
            assert db.tracker is not None and db.tracker.silence is not None
            await _wait_until(lambda: db.tracker.silence.warnings == 1, timeout=15)  # type: ignore[union-attr]
    (warning,) = [r for r in caplog.records if r.writebus["event"] == "tracker.region_silent"]
    return warning


async def test_a_misspelled_region_is_warned_once_on_real_servers(
    stack: Any, buses: Any, caplog: Any
) -> None:
    """A client started with FLY_REGION=lxa against the real stack logs one warning, after a
    few silent heartbeats, naming the regions that do broadcast and suggesting lax."""
    warning = await _the_silence_warning(stack, caplog, FLY_REGION="lxa")
    assert warning.writebus["heard"] == ["lax", "syd"]
    assert "did you mean 'lax'" in warning.writebus["message"]


async def test_a_replica_id_no_node_has_is_warned_once_on_real_servers(
    stack: Any, buses: Any, caplog: Any
) -> None:
    """WRITEBUS_REPLICA_ID names no node of lax: one warning names the replica ids lax's real
    bus nodes broadcast from -- it said the region was silent and guessed another region."""
    warning = await _the_silence_warning(stack, caplog, WRITEBUS_REPLICA_ID="nobody-here")
    message = warning.writebus["message"]
    assert "replica 'nobody-here' (WRITEBUS_REPLICA_ID), but region 'lax' broadcasts from" in message
    assert "did you mean 'lax'" not in message


async def _replica_caught_up(stack: Any) -> int:
    """The primary's flush position, once the lax replica has replayed it."""
    import psycopg

    from writebus.client.lsn import parse_lsn

    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        lsn = parse_lsn(conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])
    await asyncio.to_thread(stack.wait_replica_caught_up, 10)
    return lsn


async def test_a_wait_in_a_quiet_spell_probes_the_replica(stack: Any) -> None:
    """Broadcasts are fresh but say nothing new (one heard, then silence): a wait for a
    position the replica has replayed is answered by one query of the replica, not after the
    next broadcast (none comes here, so without the probe it would time out)."""
    prefix = f"trk{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(stack.nats_url("lax"))
    tracker = LsnTracker(settings_for(stack, "lax", prefix=prefix), nc)
    await tracker.start()
    try:
        await nc.publish(f"{prefix}.lsn.lax", _update(1))
        await _wait_until(lambda: tracker.replayed == 1)
        lsn = await _replica_caught_up(stack)
        await asyncio.sleep(0.01)  # quiet: no broadcast for longer than PROBE_QUIET
        assert await tracker.wait_for(lsn, timeout=2) >= lsn
        assert tracker.probes == 1 and tracker.updates_received == 1
        assert tracker.fallback_polls == 0
    finally:
        await tracker.close()
        await nc.close()


async def test_no_probe_where_the_region_has_several_replicas(stack: Any) -> None:
    """Two replicas heard and none named as this process's: the position read could be
    another replica's than the one a read lands on, so the wait is left to broadcasts."""
    prefix = f"trk{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(stack.nats_url("lax"))
    tracker = LsnTracker(settings_for(stack, "lax", prefix=prefix), nc)
    await tracker.start()
    try:
        await nc.publish(f"{prefix}.lsn.lax", _update(1, replica_id="a"))
        await nc.publish(f"{prefix}.lsn.lax", _update(1, replica_id="b"))
        await _wait_until(lambda: tracker.updates_received == 2)
        lsn = await _replica_caught_up(stack)
        await asyncio.sleep(0.01)
        with pytest.raises(ReplicationTimeoutError):
            await tracker.wait_for(lsn, timeout=0.3)
        assert tracker.probes == 0
    finally:
        await tracker.close()
        await nc.close()


async def test_a_probe_never_moves_the_position_back(stack: Any) -> None:
    """A probe that reads less than a broadcast already said (made up here, far ahead of the
    real replica) leaves the position where it was, and wakes nobody early."""
    prefix = f"trk{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(stack.nats_url("lax"))
    tracker = LsnTracker(settings_for(stack, "lax", prefix=prefix), nc)
    await tracker.start()
    ahead = 1 << 44
    try:
        await nc.publish(f"{prefix}.lsn.lax", _update(ahead))
        await _wait_until(lambda: tracker.replayed == ahead)
        await asyncio.sleep(0.01)
        with pytest.raises(ReplicationTimeoutError):
            await tracker.wait_for(ahead + 1, timeout=0.3)
        assert tracker.probes == 1 and tracker.replayed == ahead
    finally:
        await tracker.close()
        await nc.close()


async def test_a_replica_whose_node_went_quiet_is_read_not_assumed(
    stack: Any, buses: Any, table: str
) -> None:
    """lax has a second standby, B, with its own bus node, and this app reads B (naming no
    replica). B's node stops -- B still serves reads -- and B's replay pauses. A write's wait
    is no longer released on the other replica's broadcasts: the tracker reads B itself, so
    the write times out as applied-not-replayed rather than return and be missing from the
    read that follows (it did: a stale read). Once B replays again, the session's read sees it."""
    import psycopg

    from tests.support.stack import start_bus
    from writebus import Database, session
    from writebus.bus.embedded.ports import LOCALHOST, free_port
    from writebus.bus.embedded.postgres import PostgresServer

    primary = stack.primary
    b = PostgresServer(name="pg-lax-b", datadir=stack.base_dir / "pg" / f"lax-b-{uuid.uuid4().hex[:6]}",
                       port=free_port(), bindir=primary.bindir, run_as=primary.run_as,
                       fsync=stack.fsync)  # fmt: skip
    b.init_replica(LOCALHOST, primary.port)
    b.start()
    node = start_bus(stack, "lax", log_name="quiet-lax-b", DATABASE_URL=b.url,
                     WRITEBUS_REPLICA_ID="lax-b")  # fmt: skip
    try:
        settings = settings_for(stack, "lax", replication_timeout=3).replace(database_url=b.url)
        async with Database(settings) as db:
            tracker = db.tracker
            assert tracker is not None
            await db.execute(f"INSERT INTO {table}(body) VALUES ('both heard')")
            deadline = time.monotonic() + 10
            while "lax-b" not in tracker._progress._seen:  # B heard: a known replica
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            node.stop(10)
            with psycopg.connect(b.url, autocommit=True) as conn:
                conn.execute("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + 10
            while not tracker._progress.quiet(time.monotonic()):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            with session():
                with pytest.raises(ReplicationTimeoutError) as info:
                    await db.execute(f"INSERT INTO {table}(body) VALUES ('b paused')")
                assert info.value.committed
                with psycopg.connect(b.url, autocommit=True) as conn:
                    conn.execute("SELECT pg_wal_replay_resume()")
                count = await db.fetchval(f"SELECT count(*) FROM {table} WHERE body = 'b paused'")
            assert count == 1
    finally:
        node.stop(10)
        b.stop("fast")
