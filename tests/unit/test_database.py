"""Database routing and replay waits, with an in-memory NATS handed in by the caller.

A ``Database`` accepts an already-connected NATS client; here it is the fake from
``tests/support/fake_nats.py``, with no local database at all, so what is checked is where each
call goes and how the tracker releases it. The real-server versions are in
``tests/test_write_path.py`` and ``tests/test_tracker.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

import writebus
from tests.support.fake_nats import FakeMsg, FakeServer
from writebus.client import writes
from writebus.client.db import Database
from writebus.client.errors import (
    LostInFailoverError,
    OutcomeUnknownError,
    ReplicationTimeoutError,
)
from writebus.client.protocol import Reply, Request, decode, encode, lsn_update
from writebus.client.retry import RetryPolicy
from writebus.client.settings import Settings
from writebus.client.tracker import PROBE_QUIET, LsnTracker
from writebus.client.writes import fallback_event, write_route

LAX = Settings(region="lax", primary_region="syd", replication_timeout=2.0)


def test_write_route_is_direct_only_in_the_primary_region_with_a_database() -> None:
    """The pure routing decision: direct on the local primary, the bus everywhere else."""
    syd = Settings(region="syd", primary_region="syd")
    assert write_route(syd, has_local_pool=True) == "direct"
    assert write_route(syd, has_local_pool=False) == "bus"
    assert write_route(LAX, has_local_pool=True) == "bus"
    assert write_route(Settings(), has_local_pool=True) == "direct"  # "local" is primary


def test_a_claim_held_by_another_try_is_not_logged_as_a_lost_primary() -> None:
    """Going to the bus after an unknown direct outcome: a warning of a lost primary, unless
    the write's claim timed out (55P03), was cancelled (57014) or deadlocked (40P01) on
    another try of its id -- then an info."""
    for sqlstate in ("55P03", "57014", "40P01"):
        held = OutcomeUnknownError("r1", "its exactly-once claim failed")
        held.__cause__ = psycopg.errors.lookup(sqlstate)()
        assert fallback_event(held) == (logging.INFO, "db.direct_claim_held_by_another_try")
    lost = OutcomeUnknownError("r1", "connection lost during COMMIT")
    lost.__cause__ = psycopg.OperationalError("server closed the connection")
    assert fallback_event(lost) == (logging.WARNING, "db.direct_fell_back_to_bus")
    assert fallback_event(OutcomeUnknownError("r1")) == (
        logging.WARNING, "db.direct_fell_back_to_bus"
    )


class Bus:
    """Fake workers for ``writebus.write`` and ``writebus.rpc.*``, recording subjects and
    requests; each write commits at the next LSN."""

    def __init__(self, server: FakeServer) -> None:
        self.nc = server.client()
        self.seen: list[tuple[str, Request]] = []
        self.lsn = 100
        self.timeline = 1

    async def start(self) -> None:
        await self.nc.subscribe("writebus.write", queue="q", cb=self._on)
        await self.nc.subscribe("writebus.rpc.*", queue="q", cb=self._on)

    async def _on(self, msg: FakeMsg) -> None:
        req = decode(msg.data, Request)
        self.seen.append((msg.subject, req))
        self.lsn += 1
        value = {"ran_in": msg.subject} if req.procedure else None
        reply = Reply(id=req.id, lsn=f"0/{self.lsn:X}", lsn_int=self.lsn, value=value,
                      timeline=self.timeline)
        await self.nc.publish(msg.reply, encode(reply))

    async def replayed(
        self, region: str, lsn: int, *, primary_timeline: int | None = None,
        fork: int | None = None,
    ) -> None:  # fmt: skip
        """Broadcast that ``region``'s replica replayed ``lsn`` (relaying the primary's
        ``primary_timeline``, forked at ``fork``, if given)."""
        upd = lsn_update(region=region, replica_id="r", lsn=lsn, role="replica", in_recovery=True,
                         primary_timeline=primary_timeline, primary_fork_lsn=fork)  # fmt: skip
        await self.nc.publish(f"writebus.lsn.{region}", encode(upd))

    async def announced(
        self, lsn: int, timeline: int, *, replica_id: str = "r", fork: int | None = None
    ) -> None:
        """Broadcast lax's node announcing itself primary at ``lsn`` on ``timeline`` (promoted,
        forked at ``fork``, if it says)."""
        upd = lsn_update(region="lax", replica_id=replica_id, lsn=lsn, role="primary",
                         in_recovery=False, timeline=timeline, fork_lsn=fork,
                         lag_seconds=0.0)  # fmt: skip  (as a primary's node says)
        await self.nc.publish("writebus.lsn.lax", encode(upd))


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeServer, Bus]]:
    """A fake NATS server with fake workers on it."""
    server = FakeServer()
    bus = Bus(server)
    await bus.start()
    yield server, bus


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.001)


def reads_the_promoted_node(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's own database is the node each promotion in its region announces: a
    primary on the newest timeline heard (so the tracker follows that node alone)."""
    tracker = db.tracker
    assert tracker is not None

    async def read() -> tuple[int | None, bool, int]:
        return None, False, tracker._promotions.newest

    monkeypatch.setattr(tracker._reader, "read", read)


async def test_a_database_closed_during_a_direct_try_that_may_have_committed_says_unknown(
    fake: tuple[FakeServer, Bus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct try ends with an unknown outcome while the Database is being closed: the
    call says unknown, with its id -- not an AssertionError from the bus fallback it can no
    longer make -- and sends nothing over the bus."""
    server, bus = fake
    db = Database(Settings(region="syd", primary_region="syd"), nats=server.client())
    db._pool = object()  # type: ignore[assignment]  # a local primary: the direct route

    async def closed_meanwhile(req: Request, **kwargs: Any) -> Any:
        db._nc = None  # what close() does
        raise OutcomeUnknownError(req.id, "the connection was lost during COMMIT")

    monkeypatch.setattr(writes, "direct", closed_meanwhile)
    with pytest.raises(OutcomeUnknownError) as info:
        await db.execute("INSERT INTO t VALUES (1)", request_id="w-closed")
    assert info.value.request_id == "w-closed" and bus.seen == []


async def test_writes_outside_the_primary_region_go_to_the_bus_and_wait_for_replay(
    fake: tuple[FakeServer, Bus],
) -> None:
    """In lax a write is a request on writebus.write carrying its origin; the call returns only
    once a broadcast says the local replica replayed the commit's LSN."""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        write = asyncio.create_task(db.execute("INSERT INTO t VALUES (1)"))
        await _until(lambda: db.tracker is not None and db.tracker.waiting == 1)
        assert not write.done()
        await bus.replayed("lax", 101)
        res = await asyncio.wait_for(write, 2)
    subject, req = bus.seen[0]
    assert subject == "writebus.write" and req.origin == "lax" and req.statements is not None
    assert res.via_bus and res.replicated and res.lsn == 101


async def test_another_regions_broadcast_does_not_release_a_wait(
    fake: tuple[FakeServer, Bus],
) -> None:
    """Only this region's replay counts: syd's progress never releases a lax waiter."""
    server, bus = fake
    async with Database(LAX.replace(replication_timeout=0.2), nats=server.client()) as db:
        write = asyncio.create_task(db.execute("INSERT INTO t VALUES (1)"))
        await _until(lambda: db.tracker is not None and db.tracker.waiting == 1)
        await bus.replayed("syd", 10**6)
        with pytest.raises(ReplicationTimeoutError) as info:
            await write
        assert info.value.lsn == 101 and info.value.committed
        assert db.tracker is not None and db.tracker.waiting == 0


async def test_a_promotion_below_the_commit_makes_the_outcome_unknown(
    fake: tuple[FakeServer, Bus],
) -> None:
    """lax's replica replayed 100 and was then promoted: the write the old primary committed
    at 101 will never arrive. The waiter fails at once with an unknown outcome naming the
    request id to resend, not a replication timeout; a wait at or below the switch point
    is released as replayed."""
    server, bus = fake
    async with Database(LAX.replace(replication_timeout=30), nats=server.client()) as db:
        await bus.replayed("lax", 100)
        await _until(lambda: db.tracker is not None and db.tracker.updates_received == 1)
        write = asyncio.create_task(db.execute("INSERT INTO t VALUES (1)", request_id="w-1"))
        await _until(lambda: db.tracker is not None and db.tracker.waiting == 1)
        await bus.announced(200, 2)
        with pytest.raises(OutcomeUnknownError) as info:
            await asyncio.wait_for(write, 2)
        assert info.value.request_id == "w-1"
        lost = info.value.last_error
        assert isinstance(lost, LostInFailoverError)
        assert (lost.lsn, lost.switch_lsn, lost.region) == (101, 100, "lax")
        assert db.forks == {}  # the node did not say where it forked: sessions keep all
        assert db.tracker is not None and db.tracker.waiting == 0
        # The new primary's own commits (timeline 2) wait and are released as before; a
        # late reply from the old timeline fails at once.
        bus.timeline, bus.lsn = 2, 250
        write = asyncio.create_task(db.execute("INSERT INTO t VALUES (2)"))
        await _until(lambda: db.tracker is not None and db.tracker.waiting == 1)
        await bus.announced(300, 2)
        assert (await asyncio.wait_for(write, 2)).lsn == 251
        bus.timeline = 1
        with pytest.raises(OutcomeUnknownError):
            await asyncio.wait_for(db.execute("INSERT INTO t VALUES (3)"), 2)


async def test_the_announced_fork_decides_what_was_lost(
    fake: tuple[FakeServer, Bus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """lax's tracker last heard 100 replayed; the promoted node announces that its history
    forked at 102. The write the old primary committed at 101 reached lax after all: its
    wait, pending at the promotion, is released, not failed as lost, and the session keeps
    it. One at 103 was lost: its wait fails, and the session goes back to the fork. (Without
    ``fork_lsn`` -- an older node -- the tracker falls back to 100, and sessions keep
    everything: the test above.)"""
    server, bus = fake
    async with Database(LAX.replace(replication_timeout=30), nats=server.client()) as db:
        reads_the_promoted_node(db, monkeypatch)
        await bus.replayed("lax", 100)
        await _until(lambda: db.tracker is not None and db.tracker.updates_received == 1)
        with writebus.session() as s:
            kept = await db.execute("INSERT INTO t VALUES (1)", await_replication=False)
            bus.lsn = 102
            lost = await db.execute("INSERT INTO t VALUES (2)", await_replication=False)
            assert (kept.lsn, lost.lsn, s.lsn) == (101, 103, 103)
            waits = [asyncio.create_task(db.wait_for_lsn(r.lsn or 0, 30, r.timeline))
                     for r in (kept, lost)]  # fmt: skip
            await _until(lambda: db.tracker is not None and db.tracker.waiting == 2)
            await bus.announced(200, 2, fork=102)
            assert await asyncio.wait_for(waits[0], 2) >= 101
            with pytest.raises(LostInFailoverError) as info:
                await asyncio.wait_for(waits[1], 2)
            assert info.value.switch_lsn == 102
            assert db.forks == {2: 102} and s.lsn == 102
            with pytest.raises(LostInFailoverError):  # and at once, for a wait begun later
                await db.wait_for_lsn(103, 2, lost.timeline)
            # A second failover, to timeline 3 at 300: timeline 2's writes past it are lost.
            await bus.announced(400, 3, replica_id="r2", fork=300)
            await _until(lambda: db.forks == {2: 102, 3: 300})
            assert await db.wait_for_lsn(250, 2, 2) >= 250
            with pytest.raises(LostInFailoverError):
                await db.wait_for_lsn(350, 2, 2)
            with pytest.raises(LostInFailoverError) as first:  # lost at the first fork
                await db.wait_for_lsn(250, 2, 1)
            assert first.value.switch_lsn == 102
            assert s.lsn == 102  # timeline 1 past 102: lost in the first failover


async def test_a_promotion_elsewhere_relayed_by_the_regions_monitor_fails_what_it_lost(
    fake: tuple[FakeServer, Bus],
) -> None:
    """syd's standby was promoted, not lax's: lax's replica monitor relays the new timeline
    and its fork (102) in its broadcasts, and lax's standby follows timeline 2. Its broadcast
    of 200 -- on timeline 2 -- releases the timeline-1 write at 101, which the fork kept, and
    fails the one at 103 as lost, rather than release it as replicated. The session goes back
    to the fork."""
    server, bus = fake
    async with Database(LAX.replace(replication_timeout=30), nats=server.client()) as db:
        await bus.replayed("lax", 100, primary_timeline=1)
        await _until(lambda: db.tracker is not None and db.tracker.updates_received == 1)
        assert db.forks == {}
        with writebus.session() as s:
            kept = await db.execute("INSERT INTO t VALUES (1)", await_replication=False)
            bus.lsn = 102
            lost = await db.execute("INSERT INTO t VALUES (2)", await_replication=False)
            waits = [asyncio.create_task(db.wait_for_lsn(r.lsn or 0, 30, r.timeline))
                     for r in (kept, lost)]  # fmt: skip
            await _until(lambda: db.tracker is not None and db.tracker.waiting == 2)
            await bus.replayed("lax", 200, primary_timeline=2, fork=102)
            assert await asyncio.wait_for(waits[0], 2) >= 101
            with pytest.raises(LostInFailoverError) as info:
                await asyncio.wait_for(waits[1], 2)
            assert (info.value.lsn, info.value.switch_lsn) == (103, 102)
            assert db.forks == {2: 102} and s.lsn == 102
            await bus.replayed("lax", 300, primary_timeline=2, fork=102)  # the same news
            assert await db.wait_for_lsn(250, 2, 2) >= 250
            assert db.forks == {2: 102}


async def test_a_promotion_relayed_without_its_fork_makes_older_writes_unknown(
    fake: tuple[FakeServer, Bus],
) -> None:
    """The relayed promotion says nothing of where it forked (its node did not see it): a
    timeline-1 write lax waits for is an unknown outcome (lost at 0), not a replicated one,
    however far lax's standby gets; the fork, relayed later, then decides."""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        wait = asyncio.create_task(db.wait_for_lsn(150, 5, 1))
        await _until(lambda: db.tracker is not None and db.tracker.waiting == 1)
        await bus.replayed("lax", 200, primary_timeline=2)
        with pytest.raises(LostInFailoverError) as info:
            await asyncio.wait_for(wait, 2)
        assert info.value.switch_lsn == 0 and db.forks == {}
        await bus.replayed("lax", 210, primary_timeline=2, fork=160)
        await _until(lambda: db.forks == {2: 160})
        assert await db.wait_for_lsn(150, 2, 1) >= 150


async def test_a_promotion_elsewhere_leaves_the_probe_on(
    fake: tuple[FakeServer, Bus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a relayed promotion the tracker still reads its standby itself when a wait
    begins in a quiet spell (the probe), and that releases the wait: the standby is what the
    monitor would broadcast. (It stopped probing for good once any promotion was heard, as
    after its own database's promotion, when the position it reads is a primary's.)"""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        tracker = db.tracker
        assert tracker is not None

        async def standby_read() -> tuple[int, bool, int]:
            return 250, True, 2

        monkeypatch.setattr(tracker._reader, "read", standby_read)
        await bus.replayed("lax", 200, primary_timeline=2, fork=150)
        await _until(lambda: tracker.forks == {2: 150})
        await asyncio.sleep(2 * PROBE_QUIET)
        assert await asyncio.wait_for(db.wait_for_lsn(240, 5, 2), 1) == 250
        assert tracker.probes == 1


async def test_the_node_promoted_onto_a_newer_timeline_is_followed_though_relayed_first(
    fake: tuple[FakeServer, Bus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracker follows y, promoted onto timeline 2. A standby's monitor relays timeline 3
    before z, promoted onto it, announces itself here: the tracker follows z, whose position
    releases a timeline-3 wait. (The relay made z's timeline look old news, and the tracker
    kept following y, gone quiet.)"""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        reads_the_promoted_node(db, monkeypatch)
        await bus.announced(500, 2, replica_id="y", fork=100)
        await _until(lambda: db.forks == {2: 100})
        await bus.replayed("lax", 520, primary_timeline=3, fork=600)
        await _until(lambda: db.forks == {2: 100, 3: 600})
        wait = asyncio.create_task(db.wait_for_lsn(650, 5, 3))
        await bus.announced(700, 3, replica_id="z", fork=600)
        assert await asyncio.wait_for(wait, 1) == 700


async def test_a_stale_nodes_older_timeline_is_no_promotion(fake: tuple[FakeServer, Bus]) -> None:
    """A tracker first hears lax's node on timeline 3 (forked at 300), then a stale node's
    last announcement of timeline 2: no promotion. The timeline-3 node's next broadcast
    still counts (the region's minimum, of that node alone: this process has no database to
    ask whether to follow it). A timeline-2 write at 250 survived (below 300); of a
    timeline-1 write it cannot tell, never having heard the fork into timeline 2: lost at 0,
    an unknown outcome, never "replicated"."""
    server, bus = fake

    async with Database(LAX, nats=server.client()) as db:
        await bus.announced(400, 3, replica_id="r3", fork=300)
        await _until(lambda: db.forks == {3: 300})
        await bus.announced(260, 2, replica_id="old")
        await bus.announced(500, 3, replica_id="r3", fork=300)
        await asyncio.wait_for(_until(lambda: db.tracker is not None
                                      and db.tracker.replayed == 500), 2)  # fmt: skip
        assert db.forks == {3: 300}
        assert await db.wait_for_lsn(250, 2, 2) >= 250
        with pytest.raises(LostInFailoverError) as info:
            await db.wait_for_lsn(250, 2, 1)
        assert info.value.switch_lsn == 0


async def test_a_process_that_names_its_replica_keeps_following_it(
    fake: tuple[FakeServer, Bus],
) -> None:
    """lax has replicas r and y; this process reads from r (WRITEBUS_REPLICA_ID). y is
    promoted: its flush position does not release a wait that r has not replayed yet -- a read
    on r would miss the write -- and r's own broadcast does."""
    server, bus = fake
    async with Database(LAX.replace(replica_id="r"), nats=server.client()) as db:
        await bus.announced(500, 2, replica_id="y", fork=100)
        await _until(lambda: db.forks == {2: 100})
        wait = asyncio.create_task(db.wait_for_lsn(450, 5, 2))
        await asyncio.sleep(0.05)
        assert not wait.done()
        await bus.replayed("lax", 460)  # r's
        assert await asyncio.wait_for(wait, 2) >= 450


async def test_a_process_reading_a_standby_does_not_follow_a_node_promoted_beside_it(
    fake: tuple[FakeServer, Bus], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """lax has replicas r and y, and this process names neither; its own database is a
    standby (r). y is promoted: its flush position does not release a wait that r has not
    replayed -- a read on r would miss the write -- and r's broadcast does. (The tracker
    followed y alone, and the read was stale.)"""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        tracker = db.tracker
        assert tracker is not None

        async def standby() -> tuple[int, bool, None]:
            return 300, True, None

        monkeypatch.setattr(tracker._reader, "read", standby)
        caplog.set_level(logging.INFO, logger="writebus.client.tracker")
        await bus.replayed("lax", 300)  # r's
        await bus.announced(500, 2, replica_id="y", fork=100)
        checked = "tracker.promoted_node_checked region=lax node=y timeline=2 followed=False"
        await asyncio.wait_for(_until(lambda: checked in caplog.text), 2)
        wait = asyncio.create_task(db.wait_for_lsn(450, 5, 2))
        await asyncio.sleep(0.05)
        assert not wait.done()
        await bus.replayed("lax", 460)  # r's, now replaying y's timeline
        assert await asyncio.wait_for(wait, 2) >= 450


async def _superseded(
    db: Database, bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: Any, replayed: int
) -> LsnTracker:
    """y, this process's database, is promoted onto timeline 2 (flushed to 900) and followed;
    then z is promoted onto timeline 3, forked at 850, and y rebuilt as its standby, replayed
    to ``replayed``: the tracker is back on the region's minimum."""
    tracker = db.tracker
    assert tracker is not None
    own: list[tuple[int | None, bool, int | None]] = [(None, False, 2)]

    async def read() -> tuple[int | None, bool, int | None]:
        return own[0]

    monkeypatch.setattr(tracker._reader, "read", read)
    caplog.set_level(logging.INFO, logger="writebus.client.tracker")
    await bus.announced(900, 2, replica_id="y", fork=100)
    await asyncio.wait_for(_until(lambda: "node=y timeline=2 followed=True" in caplog.text), 2)
    assert tracker.replayed == 900
    own[0] = (replayed, True, None)
    await bus.announced(1010, 3, replica_id="z", fork=850)
    await asyncio.wait_for(_until(lambda: "node=z timeline=3 followed=False" in caplog.text), 2)
    return tracker


async def test_a_process_stops_following_its_database_once_another_node_is_promoted(
    fake: tuple[FakeServer, Bus], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """After :func:`_superseded` (y at 860): neither z's flush positions nor y's old 900
    release a timeline-3 wait at 880 that y has not replayed on the new timeline -- y's
    broadcast does. (The tracker followed z; a first fix kept y's 900 as the position known,
    a second let z's news alone count.)"""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        tracker = await _superseded(db, bus, monkeypatch, caplog, replayed=860)
        wait = asyncio.create_task(db.wait_for_lsn(880, 5, 3))
        await bus.announced(1020, 3, replica_id="z", fork=850)  # z's news is not y's
        await asyncio.sleep(0.05)
        assert not wait.done()
        assert tracker.lag_bound() is None  # nor z's lag: a max_lag read ran on y
        upd = lsn_update(region="lax", replica_id="y", lsn=890, role="replica", in_recovery=True)
        await bus.nc.publish("writebus.lsn.lax", encode(upd))
        assert await asyncio.wait_for(wait, 2) >= 880


async def test_back_to_the_minimum_the_tracker_reads_its_database_meanwhile(
    fake: tuple[FakeServer, Bus], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """After :func:`_superseded` (y at 885): until y is heard again, the tracker reads its own
    database, which releases a wait at 880 -- it waited for y's broadcast, z's making the
    broadcasts look fresh."""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        await _superseded(db, bus, monkeypatch, caplog, replayed=885)
        wait = asyncio.create_task(db.wait_for_lsn(880, 5, 3))
        await bus.announced(1020, 3, replica_id="z", fork=850)
        assert await asyncio.wait_for(wait, 2) == 885


async def test_a_check_overtaken_by_a_newer_promotion_does_not_follow_the_older_node(
    fake: tuple[FakeServer, Bus], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The tracker asks its database about y, promoted onto timeline 2; before the answer
    (y: this process's database), z is announced on timeline 3. y is not followed: its
    frozen position would release timeline-3 waits. z's next announcement is asked about."""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        tracker = db.tracker
        assert tracker is not None
        asked: list[int] = []
        answer = asyncio.Event()

        async def held() -> tuple[None, bool, int]:
            asked.append(tracker._promotions.newest)
            await answer.wait()
            return None, False, 2

        monkeypatch.setattr(tracker._reader, "read", held)
        caplog.set_level(logging.INFO, logger="writebus.client.tracker")
        await bus.announced(900, 2, replica_id="y", fork=100)
        await asyncio.wait_for(_until(lambda: asked == [2]), 2)
        await bus.announced(1010, 3, replica_id="z", fork=850)
        await asyncio.wait_for(_until(lambda: db.forks.get(3) == 850), 2)
        answer.set()
        await asyncio.wait_for(_until(lambda: tracker._follow_task is None), 2)
        assert "followed=" not in caplog.text
        await bus.announced(1020, 3, replica_id="z", fork=850)
        await asyncio.wait_for(_until(lambda: "followed=" in caplog.text), 2)
        assert asked == [2, 3] and "node=z timeline=3 followed=False" in caplog.text


async def test_without_an_announced_fork_only_the_promoted_nodes_replay_bounds_it(
    fake: tuple[FakeServer, Bus],
) -> None:
    """This process follows replica r, heard at 300. y, never heard as a standby, is promoted
    and does not say where it forked: r's position says nothing of y's fork, so a timeline-1
    write at 250 fails as lost at 0 (unknown), rather than count as surviving below 300 and
    be released as replicated."""
    server, bus = fake
    async with Database(LAX.replace(replica_id="r"), nats=server.client()) as db:
        await bus.replayed("lax", 300)  # r's
        await _until(lambda: db.tracker is not None and db.tracker.replayed == 300)
        await bus.announced(500, 2, replica_id="y")
        await _until(lambda: db.tracker is not None and db.tracker.updates_received == 2)
        with pytest.raises(LostInFailoverError) as info:
            await db.wait_for_lsn(250, 2, 1)
        assert info.value.switch_lsn == 0


async def test_a_commit_on_the_new_timeline_made_before_the_announcement_is_not_lost(
    fake: tuple[FakeServer, Bus],
) -> None:
    """After promotion the new primary commits at 101 on timeline 2 before its announcement
    reached this tracker: the announcement releases the wait; it is not taken for lost."""
    server, bus = fake
    bus.timeline = 2
    async with Database(LAX.replace(replication_timeout=30), nats=server.client()) as db:
        await bus.replayed("lax", 100)
        await _until(lambda: db.tracker is not None and db.tracker.updates_received == 1)
        write = asyncio.create_task(db.execute("INSERT INTO t VALUES (1)"))
        await _until(lambda: db.tracker is not None and db.tracker.waiting == 1)
        await bus.announced(150, 2)
        assert (await asyncio.wait_for(write, 2)).lsn == 101


async def test_await_replication_false_returns_after_the_reply(
    fake: tuple[FakeServer, Bus],
) -> None:
    """await_replication=False returns the LSN without registering a waiter."""
    server, _ = fake
    async with Database(LAX, nats=server.client()) as db:
        res = await db.execute("INSERT INTO t VALUES (1)", await_replication=False)
        assert res.lsn == 101 and not res.replicated
        assert db.tracker is not None and db.tracker.heap_size == 0


async def test_a_caller_chosen_request_id_is_sent(fake: tuple[FakeServer, Bus]) -> None:
    """execute/batch/call pass request_id through, so an unknown outcome can be resolved."""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        await db.execute("INSERT INTO t VALUES (1)", request_id="mine-1",
                         await_replication=False)
        await db.call("proc", 1, request_id="mine-2", await_replication=False)
    assert [req.id for _, req in bus.seen] == ["mine-1", "mine-2"]


async def test_rpc_region_goes_to_that_regions_subject(fake: tuple[FakeServer, Bus]) -> None:
    """rpc_region targets <prefix>.rpc.<region>; rpc_primary the primary region's; neither waits
    for replication."""
    server, bus = fake
    async with Database(LAX, nats=server.client()) as db:
        assert await db.rpc_region("lax", "stats") == {"ran_in": "writebus.rpc.lax"}
        assert await db.rpc_primary("stats") == {"ran_in": "writebus.rpc.syd"}
        assert db.tracker is not None and db.tracker.heap_size == 0


async def test_a_cancelled_write_wait_leaves_no_waiter(fake: tuple[FakeServer, Bus]) -> None:
    """Cancelling a caller that waits for replay removes its waiter at once."""
    server, _ = fake
    async with Database(LAX, nats=server.client()) as db:
        write = asyncio.create_task(db.execute("INSERT INTO t VALUES (1)"))
        await _until(lambda: db.tracker is not None and db.tracker.waiting == 1)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert db.tracker is not None and db.tracker.waiting == 0 and db.tracker.heap_size == 0


async def test_a_handed_in_connection_is_shared_and_not_closed(
    fake: tuple[FakeServer, Bus],
) -> None:
    """The tracker listens on the connection the Database was given (one per process), and
    closing the Database leaves that connection open for its owner."""
    server, _ = fake
    nc = server.client()
    async with Database(LAX, nats=nc, retry=RetryPolicy()) as db:
        assert db.nats is nc
        assert any(s.client is nc and s.subject == "writebus.lsn.lax" for s in server.subs)
    assert not nc.is_closed
    assert not any(s.client is nc for s in server.subs)


async def test_the_lag_bound_is_the_followed_replicas_or_the_most_behind(
    fake: tuple[FakeServer, Bus],
) -> None:
    """Replica r reports 8 s of lag, then y reports none. A process reading r
    (WRITEBUS_REPLICA_ID) keeps r's 8 s; one naming no replica takes the most behind, 8 s --
    both took the last broadcast's 0 s, so a max_lag=1 read went to a replica 8 s behind."""
    server, bus = fake

    async def reported(replica_id: str, lag: float) -> None:
        upd = lsn_update(region="lax", replica_id=replica_id, lsn=100, role="replica",
                         in_recovery=True, lag_seconds=lag)  # fmt: skip
        await bus.nc.publish("writebus.lsn.lax", encode(upd))

    for settings in (LAX.replace(replica_id="r"), LAX):
        async with Database(settings, nats=server.client()) as db:
            tracker = db.tracker
            assert tracker is not None
            await reported("r", 8.0)
            await reported("y", 0.0)
            await _until(lambda t=tracker: t.updates_received == 2)  # type: ignore[misc]
            bound = tracker.lag_bound()
            assert bound is not None and 8.0 <= bound < 9.0
            assert not await tracker.lag_within(0.01)
