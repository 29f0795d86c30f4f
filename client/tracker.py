"""The per-process LSN tracker: wakes callers once their local replica has replayed an LSN.

One tracker runs per process and (region, database): :mod:`writebus.client.trackers` hands
out a shared, reference-counted instance. It listens to ``<prefix>.lsn.<region>`` broadcasts
(push, no polling) and keeps waiters in a heap (:mod:`writebus.client.waiters`); the waiters a
broadcast releases resume together, from one event-loop callback (:mod:`writebus.client.wakeup`).
When broadcasts stop -- the region's bus is down -- it falls back to reading
``pg_last_wal_replay_lsn()`` from its own database while anyone waits, so a wait never hangs
and never depends on a single publisher.

It also reads that position once when a wait begins in a quiet spell (no broadcast for
:data:`PROBE_QUIET`; the probe): a write's reply and the announcement that sets the region's
monitor polling cross the WAN together, and the WAL has usually been replayed by then, so one
query from here answers sooner than the monitor's query and its broadcast. Only where the
region has a single replica (or this process names its own, ``replica_id``): the position
read is then the one this process reads from. Under load, broadcasts come every millisecond
or so and no probe is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from typing import Any

from writebus.client.deadlines import DeadlineTimer
from writebus.client.errors import LostInFailoverError, ReplicationTimeoutError, TrackerError
from writebus.client.handover import hand_over
from writebus.client.log import get_logger
from writebus.client.progress import RegionProgress, follows_promoted, lag_bound
from writebus.client.promotions import Promotions
from writebus.client.protocol import (
    LsnUpdate,
    decode,
    encoding_of,
    update_fork,
    update_lsn,
    update_primary_fork,
)
from writebus.client.replay import ReplayReader
from writebus.client.settings import Settings
from writebus.client.silence import SilenceWatch
from writebus.client.subjects import Subjects
from writebus.client.transport import NatsClient
from writebus.client.waiters import WaiterQueue
from writebus.client.wakeup import BatchFuture, release

log = get_logger("writebus.client.tracker")

#: Seconds start() waits for the server to confirm the subscription: a loaded machine can
#: take a second, and an outage must not hold up opening a database.
START_FLUSH_TIMEOUT = 5
#: A wait that begins this long (seconds) after the latest broadcast probes the replica.
PROBE_QUIET = 0.005


_payload = operator.attrgetter("payload")


class _Expired(Exception):
    """A waiter's deadline passed (internal; surfaces as ReplicationTimeoutError)."""


class LsnTracker:
    """Tracks how far the local replica has replayed, and wakes waiters.

    It listens on ``nc``, a NATS connection it does not own (the process's shared one). Use
    :func:`~writebus.client.trackers.acquire_tracker` rather than constructing one per call site.
    """

    def __init__(
        self,
        settings: Settings,
        nc: NatsClient,
        *,
        stale_after: float | None = None,
        fallback_interval: float = 0.005,
        probe: bool = True,
    ) -> None:
        self.settings = settings
        self._connect_limit = max(1.0, settings.connect_timeout)  # start() waits no longer
        self.region = settings.region
        self.subject = Subjects(settings.prefix).lsn(settings.region)
        hb = settings.heartbeat_interval
        self._progress = RegionProgress(
            replica_id=settings.replica_id or None,
            stale_after=stale_after if stale_after is not None else 2 * hb + 0.5,
        )
        self._check_interval = min(0.5, hb / 2)
        self._fallback_interval = fallback_interval
        self._queue: WaiterQueue[BatchFuture[int]] = WaiterQueue()
        self._deadlines = DeadlineTimer(self._queue, _Expired)
        self._replayed: int | None = None
        self._nc = nc
        self._sub: Any = None
        self._wake = asyncio.Event()
        self._fallback_task: asyncio.Task[None] | None = None
        self._reader = ReplayReader(settings.database_url)
        self._probe = probe
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False
        self.silence: SilenceWatch | None = None
        #: Each node's latest (lag seconds it reported, monotonic time heard).
        self._lag_reports: dict[str, tuple[float | None, float]] = {}
        #: The promotions heard, and which writes they left out.
        self._promotions = Promotions()
        #: Whether this region's own database was promoted (not only the primary elsewhere),
        #: the newest such promotion's timeline whose node was checked against this process's
        #: database (1: none), the check under way, and when a failed one may run again.
        self._region_promoted = False
        self._checked_timeline = 1
        self._follow_task: asyncio.Task[None] | None = None
        self._follow_retry_at = 0.0
        #: The tracker this one's waits went to when it closed (a reopened connection's).
        self._successor: LsnTracker | None = None
        self._report_waiters: set[asyncio.Future[None]] = set()
        self.updates_received = 0
        self.fallback_polls = 0
        self.probes = 0

    def __repr__(self) -> str:
        n, at = len(self._queue), self._replayed
        return f"<LsnTracker region={self.region!r} waiters={n} replayed={at}>"

    @property
    def waiting(self) -> int:
        """Number of callers waiting now."""
        return len(self._queue)

    @property
    def heap_size(self) -> int:
        """Entries in the waiter heap (0 when nobody waits)."""
        return self._queue.heap_size

    @property
    def forks(self) -> dict[int, int]:
        """New timeline -> fork, of each promotion heard (this region's, or relayed) whose fork
        was announced (``fork_lsn``, ``primary_fork_lsn``): what older timelines committed past
        a fork never arrives here."""
        return self._promotions.forks

    @property
    def replayed(self) -> int | None:
        """The highest replayed LSN known, or None before anything was heard."""
        return self._replayed

    async def start(self) -> None:
        """Subscribe to the region's progress subject and start the fallback watcher."""
        self._sub = await self._nc.subscribe(self.subject, cb=self._on_message)
        # The server has the subscription when this returns (else a broadcast in six was missed).
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=min(START_FLUSH_TIMEOUT, int(self._connect_limit)))
        self._fallback_task = asyncio.create_task(
            self._fallback_loop(), name=f"writebus-tracker-fallback-{self.region}"
        )
        self.silence = SilenceWatch(
            self._nc, prefix=self.settings.prefix, region=self.region,
            heartbeat=self.settings.heartbeat_interval, replica_id=self.settings.replica_id,
            last_heard=lambda: self._progress.last_heard(),  # the one followed now
        )  # fmt: skip
        self.silence.start()

    async def close(self, successor: LsnTracker | None = None) -> None:
        """Stop: hand every waiter to ``successor`` (:mod:`~writebus.client.handover`), and
        later waits too, else wake them with :class:`TrackerError`; close connections."""
        self._closed = True
        if successor is not None and not successor._closed:
            self._successor = successor  # before any await: a wait arriving meanwhile goes on
        if self.silence is not None:
            await self.silence.stop()
        self._deadlines.cancel()
        waiters = self._queue.drain()
        if self._successor is not None:
            hand_over(waiters, self._successor, asyncio.get_running_loop(), _Expired)
            waiters = []
        for w in waiters:
            if not w.payload.done():
                w.payload.set_exception(TrackerError("the LSN tracker was closed"))
        for task in (self._fallback_task, self._probe_task, self._follow_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._reader.close()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    # -- progress in ----------------------------------------------------------------------

    async def _on_message(self, msg: Any) -> None:
        try:
            upd = decode(msg.data, LsnUpdate, encoding_of(msg.headers, msg.data))
            lsn, fork = update_lsn(upd), update_fork(upd)
            relayed = update_primary_fork(upd)
        except Exception as exc:  # a bad broadcast must not stop the tracker
            log.warning("tracker.bad_update", error=str(exc), subject=msg.subject)
            return
        heard = self._promotions
        if upd.role == "primary" and upd.region == self.region and not upd.in_recovery:
            # After a failover this region's database is the primary: its flush position is
            # what it has "replayed" (a promoted standby's replay LSN freezes). Positions on
            # its new timeline say nothing of writes the old primary committed past the point
            # of promotion: those never arrived here.
            timeline = upd.timeline
            if timeline is not None and timeline < heard.newest:
                return  # a stale node's last word, from an older timeline
            if timeline is not None and timeline > 1:
                self._consider_following(upd.replica_id, timeline)
                self._region_promoted = True
                if heard.is_news(timeline, fork):  # or its fork first heard
                    self._promoted(timeline, fork, upd.replica_id)
        elif upd.role != "replica" or not upd.in_recovery:
            return
        elif heard.is_news(upd.primary_timeline, relayed) and upd.primary_timeline:
            # The primary was promoted elsewhere, as this region's monitor heard it: before
            # this standby's position counts, which may be on the new timeline already.
            self._promoted(upd.primary_timeline, relayed, None, relayed=True)
        self.updates_received += 1
        now = time.monotonic()
        self._progress.observe(upd.replica_id, lsn, now)
        self.advance(self._progress.replayed(now))
        if upd.role == "replica":  # what each standby replayed: a bound for its promotion
            heard.standby_replayed(upd.replica_id, lsn)
        self._lag_reports[upd.replica_id] = (upd.lag_seconds, now)
        if self._report_waiters:
            for fut in self._report_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._report_waiters.clear()

    def _consider_following(self, node: str, timeline: int) -> None:
        """``node`` of this region announced itself promoted onto ``timeline``: follow it alone
        if it is this process's own database (:func:`~.progress.follows_promoted`, asked once
        per promotion) unless it names its replica. Until then: the region's minimum."""
        if self.settings.replica_id or self._closed or timeline <= self._checked_timeline:
            return
        if self._follow_task is not None or time.monotonic() < self._follow_retry_at:
            return
        self._follow_task = asyncio.get_running_loop().create_task(self._check_own(node, timeline))

    async def _check_own(self, node: str, timeline: int) -> None:
        try:
            async with asyncio.timeout(START_FLUSH_TIMEOUT):
                _, standby, own_timeline = await self._reader.read()
        except Exception as exc:  # minimum meanwhile; a later broadcast asks again
            first = not self._follow_retry_at  # of a streak: warned once
            (log.warning if first else log.debug)(
                "tracker.own_database_unread", region=self.region, error=repr(exc)
            )
            self._follow_retry_at = time.monotonic() + self._check_interval
            return
        finally:
            self._follow_task = None
        self._follow_retry_at = 0.0
        if timeline <= self._checked_timeline or timeline < self._promotions.newest:
            return  # a newer promotion was heard meanwhile: its node is asked about next
        self._checked_timeline = timeline
        mine = follows_promoted(own_standby=standby, own_timeline=own_timeline,
                                promoted_timeline=timeline)  # fmt: skip
        log.info("tracker.promoted_node_checked", region=self.region, node=node,
                 timeline=timeline, followed=mine)  # fmt: skip
        if mine or self._progress.replica_id is not None:
            # Positions heard before say nothing of the new view (older timelines): from
            # the node alone, or from nothing -- the fallback reads this database meanwhile.
            self._progress = self._progress.following(node if mine else None)
            self._replayed = None
            self.advance(self._progress.replayed(time.monotonic()))

    def _promoted(
        self, timeline: int, fork: int | None, node: str | None, *, relayed: bool = False
    ) -> None:
        """A promotion onto ``timeline``, its history forked at ``fork`` (None: not announced),
        of ``node`` (None: not known here) -- this region's database, or the primary elsewhere
        (``relayed``): fail the waits for writes of older timelines it left out
        (:class:`~writebus.client.promotions.Promotions`) -- they never arrive."""
        switch = self._promotions.heard(timeline, fork, node)
        lost = self._promotions.lost
        failed = self._queue.pop_lost(lambda at, tl: lost(at, tl) is not None)
        for waiter in failed:
            if not waiter.payload.done():
                lost_at = lost(waiter.lsn, waiter.timeline) or 0
                waiter.payload.set_exception(LostInFailoverError(waiter.lsn, lost_at, self.region))
        quiet = relayed and not failed  # a failover elsewhere, long ago as a rule: no news here
        (log.info if quiet else log.warning)(
            "tracker.primary_promoted" if relayed else "tracker.region_promoted",
            region=self.region, switch_lsn=switch, timeline=timeline,
            fork_announced=fork is not None, waits_failed=len(failed),
        )  # fmt: skip

    def lag_bound(self, now: float | None = None) -> float | None:
        """An upper bound on the local replica's lag in seconds: the lag its node last
        reported plus the time since -- the node followed, else the most behind of those
        heard lately. None when none was heard lately, or one reports no lag."""
        now = time.monotonic() if now is None else now
        if self._progress.replayed(now) is None:
            return None  # a quiet one, or unknown since a promotion: may be this process's
        return lag_bound(self._lag_reports, followed=self._progress.replica_id,
                         stale_after=self._progress.stale_after, now=now)  # fmt: skip

    async def lag_within(self, max_lag: float) -> bool:
        """True once the lag bound is at most ``max_lag`` seconds: at once when it already
        is, else at the first broadcast that says so within ``max_lag`` seconds."""
        if self._successor is not None:
            return await self._successor.lag_within(max_lag)
        deadline = time.monotonic() + max_lag
        while True:
            bound = self.lag_bound()
            if bound is not None and bound <= max_lag:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._report_waiters.add(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                return False
            finally:
                self._report_waiters.discard(fut)

    def advance(self, replayed: int | None) -> int:
        """Record that the replica has replayed ``replayed``; wake whoever that satisfies, and
        return how many. Without a replica id the position is the region's minimum, which can
        move back when a slower replica is first heard from: it is taken as it is (a waiter
        released earlier was released correctly at that time)."""
        if replayed is None:
            return 0
        if self._replayed == replayed:
            return 0
        self._replayed = replayed
        woken = self._queue.pop_reached(replayed)
        if not woken:
            return 0
        loop = asyncio.get_running_loop()
        # One callback resumes every woken task (not one each): a cancelled waiter's future
        # is skipped, and its task discards the waiter.
        n = release(map(_payload, woken), replayed)
        # After the woken tasks' first steps, which were scheduled just now.
        loop.call_soon(self._queue.forget_spent)
        return n

    def _fresh(self) -> bool:
        """Broadcasts give a position: recent, from every replica known, none gone quiet
        (else the fallback polls)."""
        return self._progress.replayed(time.monotonic()) is not None

    # -- waiting --------------------------------------------------------------------------

    async def wait_for(self, lsn: int, timeout: float, timeline: int | None = None) -> int:
        """Wait until the local replica has replayed ``lsn``; return the replayed position.

        Returns at once when already replayed. Raises :class:`ReplicationTimeoutError` (which
        carries ``lsn`` and says the write committed) after ``timeout`` seconds. A timed-out or
        cancelled wait leaves nothing behind.
        """
        lost_at = self._promotions.lost(lsn, timeline)
        if lost_at is not None:
            raise LostInFailoverError(lsn, lost_at, self.region)
        if self._successor is not None:  # closed, its waits handed on (a reopened connection)
            return await self._successor.wait_for(lsn, timeout, timeline)
        if self._replayed is not None and self._replayed >= lsn:
            return self._replayed
        if self._closed:
            raise TrackerError("the LSN tracker is closed")
        loop = asyncio.get_running_loop()
        fut: BatchFuture[int] = BatchFuture(loop=loop)
        deadline = loop.time() + timeout
        waiter = self._queue.add(lsn, fut, timeline, deadline)
        self._deadlines.include(loop, deadline)
        if not self._fresh():
            self._wake.set()  # broadcasts are missing: let the fallback poll now
        elif self._probe and self._probe_task is None and self._quiet():
            self._probe_task = loop.create_task(self._probe_once())
        # Nothing runs on the way out of a successful wait: the queue already let the waiter
        # go, and with thousands woken at once every step per waiter adds to the last one's
        # latency (a timer per waiter, or a `finally`, cost about a third on top of the wake).
        try:
            return await fut
        except _Expired:
            raise ReplicationTimeoutError(
                lsn, timeout, self._replayed, self.region, timeline=timeline
            ) from None
        except BaseException:
            self._queue.discard(waiter)  # cancelled: leave nothing behind
            raise

    # -- reading the replica ourselves: a probe when quiet, a fallback when nobody broadcasts --

    def _quiet(self) -> bool:
        now = time.monotonic()
        last = self._progress.last_heard()
        return self._progress.single(now) and (last is None or now - last >= PROBE_QUIET)

    async def _probe_once(self) -> None:
        try:
            lsn, standby, _ = await self._reader.read()
        except Exception as exc:  # the broadcasts still come: nothing is lost
            log.debug("tracker.probe_failed", region=self.region, error=str(exc))
        else:
            self.probes += 1
            # A promoted database's position says nothing of the old primary's last writes:
            # that is for the promotion broadcast to settle (failover, above). Never back: a
            # broadcast may have come in meanwhile.
            if standby and not self._region_promoted and lsn is not None:
                if self._replayed is None or lsn > self._replayed:
                    self.advance(lsn)
        finally:
            self._probe_task = None

    async def _fallback_loop(self) -> None:
        while not self._closed:
            # Woken by a waiter arriving while broadcasts are stale, or periodically to notice
            # broadcasts stopping while callers already wait.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._check_interval)
            self._wake.clear()
            logged = False
            while self._queue and not self._fresh() and not self._closed:
                if not logged:
                    # Before the first broadcast this is start-up, not an outage (a region
                    # that stays silent is reported once by the SilenceWatch).
                    last, now = self._progress.last_heard(), time.monotonic()
                    quiet, heard = self._progress.quiet(now), last is not None
                    (log.warning if heard else log.debug)(
                        "tracker.fallback_polling", region=self.region, waiting=len(self._queue),
                        reason=(f"replica {', '.join(quiet)} went quiet" if quiet else
                                "no broadcast yet" if last is None else "broadcasts stopped"
                                if now - last > self._progress.stale_after else
                                "replica positions unknown since a promotion"),
                    )  # fmt: skip
                    logged = True
                try:
                    lsn, standby, timeline = await self._reader.read()
                except Exception as exc:
                    log.warning("tracker.fallback_failed", region=self.region, error=str(exc))
                    await asyncio.sleep(0.2)
                    continue
                self.fallback_polls += 1
                if not standby and timeline is not None and timeline > self._promotions.newest:
                    # Promoted, and not announced yet: its own position says nothing of what
                    # the old primary committed past the fork, which is not known yet either.
                    self._region_promoted = True
                    self._promoted(timeline, None, None)
                self.advance(lsn)
                await asyncio.sleep(self._fallback_interval)
