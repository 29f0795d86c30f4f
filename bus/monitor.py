"""Replay progress publishers.

* :class:`ReplicaMonitor` (a node whose database is a standby): publishes the replica's replay
  LSN on ``<prefix>.lsn.<region>`` when it advances, and at least every heartbeat.
* :class:`PrimaryAnnouncer` (a node whose database is the primary): publishes the primary's flush
  LSN after each commit it serves and every heartbeat, so replica monitors know how far there is
  to go and poll fast only while behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg

from writebus.bus.cadence import Cadence, MonitorState
from writebus.bus.lag import LagClock
from writebus.bus.standing import TIMELINE_HEX
from writebus.client.errors import ProtocolError
from writebus.client.log import get_logger
from writebus.client.lsn import format_lsn, parse_lsn
from writebus.client.protocol import (
    LsnUpdate,
    decode,
    encode,
    encoding_of,
    lsn_update,
    update_fork,
)
from writebus.client.version import VERSION

log = get_logger("writebus.bus.monitor")

_REPLICA_SQL = (
    "SELECT pg_last_wal_replay_lsn()::text, pg_is_in_recovery(), "
    "extract(epoch FROM pg_last_xact_replay_timestamp())::float8"
)
_PRIMARY_SQL = (
    "SELECT pg_current_wal_flush_lsn()::text, pg_is_in_recovery(), "
    f"CASE WHEN NOT pg_is_in_recovery() THEN {TIMELINE_HEX} END"
)


def _update(
    region: str, replica_id: str, lsn: int, *, role: str, in_recovery: bool, **extra: Any
) -> bytes:
    return encode(
        lsn_update(
            region=region,
            replica_id=replica_id,
            lsn=lsn,
            role=role,
            in_recovery=in_recovery,
            version=VERSION,
            **extra,
        )
    )


async def _publish(nc: Any, subject: str, data: bytes) -> bool:
    """Publish, surviving a NATS outage (nats-py reconnects; the next heartbeat catches up)."""
    try:
        await nc.publish(subject, data)
    except Exception as exc:
        log.warning("monitor.publish_failed", subject=subject, error=type(exc).__name__)
        return False
    return True


class ReplicaMonitor:
    """Polls a standby's replay position and broadcasts it."""

    def __init__(
        self,
        *,
        nc: Any,
        dsn: str,
        subject: str,
        primary_subject: str,
        region: str,
        replica_id: str,
        cadence: Cadence | None = None,
    ) -> None:
        self.nc = nc
        self.dsn = dsn
        self.subject = subject
        self.primary_subject = primary_subject
        self.region = region
        self.replica_id = replica_id
        self.cadence = cadence or Cadence()
        self.state = MonitorState()
        self.lag = self._lag_clock()
        #: Unix time of the last transaction the replica replayed (None before any).
        self.replay_timestamp: float | None = None
        self.polls = 0
        self.published = 0
        self.promoted = asyncio.Event()
        #: Where the history forked and the new timeline, once :attr:`promoted` (None: not
        #: seen on a connection that had seen recovery).
        self.fork: tuple[int, int] | None = None
        #: The newest primary timeline announced, and its fork (None: not announced): relayed
        #: in every broadcast, so the region's clients learn of a promotion elsewhere.
        self.primary_timeline: int | None = None
        self.primary_fork: int | None = None
        self._relay_due = False
        self._saw_recovery = False
        self._news = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def start(self) -> None:
        """Subscribe to the primary's announcements and start polling."""
        self._sub = await self.nc.subscribe(self.primary_subject, cb=self._on_primary)
        self._task = asyncio.create_task(self._run(), name=f"replica-monitor-{self.region}")

    async def stop(self) -> None:
        """Stop polling and publishing."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.close()

    async def _on_primary(self, msg: Any) -> None:
        try:
            upd = decode(msg.data, LsnUpdate, encoding_of(msg.headers, msg.data))
        except Exception:
            return
        self.heard_primary(upd)

    def _lag_clock(self, replayed: int | None = None) -> LagClock:
        """A lag clock for which the primary is silent after missing three heartbeats."""
        return LagClock(replayed=replayed, silent_after=3 * self.cadence.heartbeat + 1.0)

    def heard_primary(self, upd: LsnUpdate) -> None:
        """A progress broadcast, from any region: a primary's announcement sets the polling
        pace and the lag -- unless it comes from a timeline older than the newest announced (a
        stale primary's last word). The node hands in what it hears on every region's subject:
        a standby promoted outside the primary region announces on its own."""
        if upd.role != "primary" or not self._heard_timeline(upd):
            return
        now = time.monotonic()
        self.lag.announced(upd.lsn_int, now)
        if self.state.announce(upd.lsn_int, now, self.cadence):
            self._news.set()

    def _heard_timeline(self, upd: LsnUpdate) -> bool:
        """Keep the newest timeline announced, and its fork; False for an older one. A
        promotion is published at the next poll, without waiting for progress or a heartbeat,
        and the primary's positions count afresh: the new timeline's start below the old one's
        last position."""
        timeline, known = upd.timeline, self.primary_timeline
        if timeline is None or (known is not None and timeline < known):
            return timeline is None  # a node before timelines; or a stale primary
        try:
            fork = update_fork(upd)
        except ProtocolError:
            fork = None
        if timeline != known:
            self.primary_timeline, self.primary_fork = timeline, fork
            if known is not None:
                self.lag, self.state.target = self._lag_clock(self.state.replayed), 0
        elif self.primary_fork is None and fork is not None:
            self.primary_fork = fork
        else:
            return True
        if timeline > 1:  # a promotion: news for the region's clients, publish it now
            self._relay_due = True
            self._news.set()
        return True

    async def _fork(self) -> tuple[int, int] | None:
        """Where the database's history forked, and onto which timeline, now that this poll saw
        it promoted: its replay position, which stays where recovery ended. Only on a
        connection that saw it in recovery: a new one may follow a restart, after which the
        value has moved (to where crash recovery ended) or is gone."""
        if not self._saw_recovery or self._conn is None:
            return None
        try:
            cur = await self._conn.execute(f"SELECT pg_last_wal_replay_lsn()::text, {TIMELINE_HEX}")
            row = await cur.fetchone()
        except Exception as exc:
            log.warning("monitor.fork_unread", region=self.region, error=str(exc))
            return None
        if not row or not row[0] or not row[1]:
            return None
        return parse_lsn(row[0]), int(row[1], 16)

    async def _poll(self) -> tuple[int | None, bool]:
        if self._conn is None or self._conn.closed:
            self._saw_recovery = False
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=2
            )
        cur = await self._conn.execute(_REPLICA_SQL)
        row = await cur.fetchone()
        assert row is not None
        self.polls += 1
        if row[2] is not None:
            self.replay_timestamp = float(row[2])
        return (parse_lsn(row[0]) if row[0] else None), bool(row[1])

    async def _run(self) -> None:
        cadence = self.cadence
        while True:
            try:
                replayed, in_recovery = await self._poll()
            except Exception as exc:
                log.warning("monitor.poll_failed", region=self.region, error=str(exc))
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                self._conn = None
                await asyncio.sleep(min(0.5, cadence.heartbeat))
                continue
            if not in_recovery:
                self.fork = await self._fork()
                log.warning("monitor.promoted", region=self.region, replica_id=self.replica_id,
                            fork=format_lsn(self.fork[0]) if self.fork else None)  # fmt: skip
                self.promoted.set()
                return
            self._saw_recovery = True
            now = time.monotonic()
            self.state.replayed = replayed
            if replayed is not None:
                self.lag.replayed_to(replayed)
            relay, self._relay_due = self._relay_due, False
            if replayed is not None and (relay or self.state.should_publish(now, cadence)):
                update = _update(
                    self.region,
                    self.replica_id,
                    replayed,
                    role="replica",
                    in_recovery=True,
                    primary_lsn=self.lag.primary,
                    lag_bytes=self.lag.lag_bytes(now),
                    lag_seconds=self.lag.lag_seconds(now),
                    replay_timestamp=self.replay_timestamp,
                    primary_timeline=self.primary_timeline,
                    primary_fork_lsn=self.primary_fork,
                )
                if await _publish(self.nc, self.subject, update):
                    self.state.published_now(now)
                    self.published += 1
            delay = 0.0 if self._relay_due else self.state.next_delay(now, cadence)
            if delay <= cadence.fast_interval:
                await asyncio.sleep(delay)
            else:
                self._news.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._news.wait(), delay)


class PrimaryAnnouncer:
    """Broadcasts the primary's flush LSN after commits and on every heartbeat."""

    def __init__(
        self,
        *,
        nc: Any,
        dsn: str,
        subject: str,
        region: str,
        replica_id: str,
        heartbeat: float = 1.0,
        timeline: int | None = None,
        fork: int | None = None,
        on_timeline: Callable[[int | None], None] | None = None,
    ) -> None:
        self.nc = nc
        self.dsn = dsn
        self.subject = subject
        self.region = region
        self.replica_id = replica_id
        self.heartbeat = heartbeat
        self.demoted = asyncio.Event()
        self.published = 0
        #: The database's WAL timeline: as the node read it, then from each heartbeat.
        self.timeline = timeline
        #: Where the database's history forked, when this node saw it promoted (else None),
        #: onto ``timeline``: a heartbeat that finds another timeline drops it.
        self.fork = fork
        self._fork_timeline = timeline
        #: Told when a heartbeat finds the database on another timeline than the last one.
        self._on_timeline = on_timeline
        self._latest = 0
        self._announced = 0
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._hb_task: asyncio.Task[None] | None = None

    def committed(self, lsn: int) -> None:
        """A write committed at ``lsn``: announce it soon (coalescing bursts)."""
        if lsn > self._latest:
            self._latest = lsn
            self._kick.set()

    async def start(self) -> None:
        """Start announcing."""
        self._task = asyncio.create_task(self._announce_loop(), name="primary-announcer")
        self._hb_task = asyncio.create_task(self._heartbeat_loop(), name="primary-heartbeat")

    async def stop(self) -> None:
        """Stop announcing."""
        for t in (self._task, self._hb_task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    async def _announce_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._latest > self._announced:
                self._announced = self._latest
                update = _update(
                    self.region,
                    self.replica_id,
                    self._latest,
                    role="primary",
                    in_recovery=False,
                    primary_lsn=self._latest,
                    lag_bytes=0,
                    lag_seconds=0.0,
                    timeline=self.timeline,
                    fork_lsn=self.fork,
                )
                if await _publish(self.nc, self.subject, update):
                    self.published += 1

    async def _heartbeat_loop(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        while True:
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, connect_timeout=2
                    )
                cur = await conn.execute(_PRIMARY_SQL)
                row = await cur.fetchone()
                assert row is not None
                if row[1]:
                    log.warning("monitor.demoted", region=self.region)
                    self.demoted.set()
                    return
                timeline, self.timeline = self.timeline, int(row[2], 16) if row[2] else None
                if self.timeline != self._fork_timeline:
                    self.fork = None  # promoted again, under this node (a moved address)
                if self.timeline != timeline and self._on_timeline is not None:
                    log.warning("monitor.timeline_changed", region=self.region,
                                timeline=self.timeline, was=timeline)  # fmt: skip
                    self._on_timeline(self.timeline)
                self.committed(parse_lsn(row[0]))
                self._announced = 0  # re-announce on the heartbeat even without news
                self._kick.set()
            except asyncio.CancelledError:
                if conn is not None:
                    await conn.close()
                raise
            except Exception as exc:
                log.warning("monitor.primary_poll_failed", region=self.region, error=str(exc))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                conn = None
            await asyncio.sleep(self.heartbeat)
