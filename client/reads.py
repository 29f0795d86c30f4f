"""What a read waits for, and where it runs: session, strong and bounded-staleness reads.

* ``after=token`` (and the current session, :mod:`writebus.client.tokens`) -- wait until the local
  replica has replayed the token's LSN, then read locally. Free when it already has.
* ``consistency="strong"`` -- see every write committed anywhere before the call started: ask
  the primary region's bus for the primary's flush LSN (one WAN round trip), wait for the local
  replica to replay it, read locally. A primary *announcement* is not used: it carries no proof
  that it was taken after the call started (the regions' clocks are not comparable), so it could
  miss a write committed just before.
* ``max_lag=S`` -- read locally at once when the replica's lag (from the progress broadcasts:
  reported lag plus the report's age) is at most ``S`` seconds; otherwise wait up to ``S`` for a
  broadcast that says it caught up; then raise :class:`StaleReadError`, or with
  ``fallback="primary"`` read from the primary (``PRIMARY_DATABASE_URL``) across the WAN.
  The default fallback is ``"raise"``: a read that silently costs a WAN round trip and loads the
  primary should be the caller's explicit choice.

In the primary region every read is already on the primary: nothing waits.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from psycopg_pool import AsyncConnectionPool

from writebus.client.errors import (
    ReplicationTimeoutError,
    StaleReadError,
    WriteBusError,
    not_open,
)
from writebus.client.log import get_logger
from writebus.client.lsn import format_lsn
from writebus.client.pgpool import open_pool
from writebus.client.procedures import PING
from writebus.client.protocol import Request
from writebus.client.retry import RetryPolicy, for_procedure_calls
from writebus.client.rpc import request
from writebus.client.settings import Settings
from writebus.client.subjects import Subjects
from writebus.client.tokens import current_session, token_lsn
from writebus.client.tracker import LsnTracker
from writebus.client.transport import NatsClient

log = get_logger("writebus.client.reads")

Consistency = Literal["session", "strong"] | None
Fallback = Literal["raise", "primary"]
Target = Literal["local", "primary"]


def wanted_lsn(*lsns: int | None) -> int | None:
    """The highest of the positions a read must wait for (None: no wait)."""
    known = [lsn for lsn in lsns if lsn is not None]
    return max(known) if known else None


#: Seconds a read waits for a position before it asks the primary whether it reached it.
VERIFY_AFTER = 0.5


class ReadGate:
    """Decides and awaits what a read needs before it runs; owns the lazily opened pool on the
    primary for ``fallback="primary"``."""

    def __init__(self, settings: Settings, retry: RetryPolicy) -> None:
        self.settings = settings
        self.retry = retry
        self._primary_pool: AsyncConnectionPool[Any] | None = None
        self._opening = asyncio.Lock()  # one pool for every task
        self._closes = 0  # a pool opening across a close is not kept (the Database may reopen)

    async def close(self) -> None:
        """Close the primary pool if one was opened."""
        self._closes += 1
        pool, self._primary_pool = self._primary_pool, None
        if pool is not None:
            await pool.close()

    async def prepare(
        self,
        *,
        nc: NatsClient | None,
        tracker: LsnTracker | None,
        after: str | None,
        session_lsn: int | None,
        consistency: Consistency,
        max_lag: float | None,
        fallback: Fallback,
        timeout: float | None,
    ) -> Target:
        """Wait for what the read needs; return where it must run."""
        at_once = self.at_once(
            tracker=tracker, after=after, session_lsn=session_lsn, consistency=consistency,
            max_lag=max_lag, fallback=fallback,
        )  # fmt: skip
        if at_once is not None:
            return at_once
        assert tracker is not None
        after_lsn = token_lsn(after) if after else None
        strong_lsn = await self.primary_flush_lsn(nc) if consistency == "strong" else None
        lsn = wanted_lsn(after_lsn, session_lsn, strong_lsn)
        if lsn is not None and strong_lsn is not None and lsn > strong_lsn:
            # The primary's position, read after this call began, is below a token: the
            # token holds a position it never reached (forged, lost in a failover). No need
            # to ask it again (after VERIFY_AFTER): the primary's own is what to wait for.
            lsn = self._beyond_primary(lsn, strong_lsn)
        if lsn is not None:
            wait = timeout if timeout is not None else self.settings.replication_timeout
            verify = strong_lsn is None  # else it is the primary's own: real
            await self._replayed(tracker, nc, lsn, wait, verify)
        if max_lag is None or await tracker.lag_within(max_lag):
            return "local"
        if fallback == "primary":
            return "primary"
        bound = tracker.lag_bound()
        raise StaleReadError(
            f"the replica in {self.settings.region!r} lags "
            + (f"{bound:.3f}s" if bound is not None else "an unknown time")
            + f", more than max_lag={max_lag:g}s, and did not catch up within it; pass "
            "fallback='primary' to read from the primary instead",
            lag=bound,
            max_lag=max_lag,
            region=self.settings.region,
        )

    def at_once(
        self,
        *,
        tracker: LsnTracker | None,
        after: str | None,
        session_lsn: int | None,
        consistency: Consistency,
        max_lag: float | None,
        fallback: Fallback,
    ) -> Target | None:
        """``"local"`` when the read needs nothing -- no option asks for anything, or the only
        positions to wait for are already replayed -- else None: :meth:`prepare` must run. No
        I/O and no waiting (the sync API calls it from the caller's thread). Raises on invalid
        options, whatever else the read asks."""
        if consistency not in (None, "session", "strong"):
            raise ValueError(f"consistency must be 'session' or 'strong', not {consistency!r}")
        if fallback not in ("raise", "primary"):
            raise ValueError(f"fallback must be 'raise' or 'primary', not {fallback!r}")
        after_lsn = token_lsn(after) if after else None  # a bad token is an error, even here
        if self.settings.is_primary:
            return "local"
        lsn = wanted_lsn(after_lsn, session_lsn)
        if tracker is None:  # not open, or closed: nothing can wait
            if lsn is None and consistency != "strong" and max_lag is None:
                return "local"
            raise not_open("the Database", write=False)
        if consistency == "strong" or max_lag is not None:
            return None
        if lsn is None:
            return "local"
        replayed = tracker.replayed
        return "local" if replayed is not None and replayed >= lsn else None

    async def _replayed(
        self, tracker: LsnTracker, nc: NatsClient | None, lsn: int, wait: float, verify: bool
    ) -> None:
        """Wait up to ``wait`` seconds for the replica to replay ``lsn``. A wait that lasts
        :data:`VERIFY_AFTER` (and may, ``verify``: not a position the primary just gave) also
        asks the primary whether it reached ``lsn`` at all: a token from elsewhere may hold a
        position it never reached (forged, another cluster's, lost in a failover), which
        would hold every read of the request for the whole timeout. Such a position counts as
        the primary's own, in the session too (its cookie is renewed). The replay that comes
        first ends the wait: the question costs nothing then."""
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        try:
            if verify and wait > VERIFY_AFTER:
                try:
                    await tracker.wait_for(lsn, VERIFY_AFTER)
                    return
                except ReplicationTimeoutError:
                    lsn = await self._verified(tracker, nc, lsn, end)
            await tracker.wait_for(lsn, max(0.0, end - loop.time()))
        except ReplicationTimeoutError as e:
            raise ReplicationTimeoutError(
                e.lsn, wait, e.replayed, e.region, timeline=e.timeline, read=True
            ) from None

    async def _verified(
        self, tracker: LsnTracker, nc: NatsClient | None, lsn: int, end: float
    ) -> int:
        """``lsn`` once replayed, or what to wait for instead: the primary's position, when
        the primary's answer (asked meanwhile) is lower."""
        loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(tracker.wait_for(lsn, max(0.0, end - loop.time())))
        asking = asyncio.ensure_future(self._reached(nc, lsn, end - loop.time()))
        try:
            await asyncio.wait({waiting, asking}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done() or asking.result() >= lsn:
                await waiting  # replayed (or timed out: the caller's error)
                return lsn
            return asking.result()
        finally:
            for task in (waiting, asking):
                if not task.done():
                    task.cancel()

    async def _reached(self, nc: NatsClient | None, lsn: int, timeout: float) -> int:
        """``lsn``, or the primary's flush position if that is lower (found by asking the
        primary; if it cannot answer, ``lsn``)."""
        try:
            flush = await self.primary_flush_lsn(nc, timeout=max(0.1, timeout))
        except WriteBusError:
            return lsn
        return lsn if flush >= lsn else self._beyond_primary(lsn, flush)

    def _beyond_primary(self, lsn: int, flush: int) -> int:
        """``flush``, the primary's position, for a wait on ``lsn`` beyond it; the session
        is capped there (its cookie renewed)."""
        log.warning("reads.position_beyond_primary", region=self.settings.region,
                    lsn=format_lsn(lsn), primary_lsn=format_lsn(flush))  # fmt: skip
        current = current_session()
        if current is not None:
            current.cap(flush)
        return flush

    async def primary_flush_lsn(
        self, nc: NatsClient | None, *, timeout: float | None = None
    ) -> int:
        """The primary's flush LSN, read by the primary region's bus after this call began
        (within ``timeout`` seconds, default ``rpc_timeout``)."""
        if nc is None:
            raise WriteBusError("the Database is not open")
        s = self.settings
        timeout = timeout if timeout is not None else s.rpc_timeout
        end = time.monotonic() + timeout
        pause = PING_AGAIN_AFTER
        while True:
            asked = time.monotonic()
            left = max(0.1, end - asked)
            ex = await request(
                nc,
                Subjects(s.prefix).rpc(s.primary_region),
                Request(id=_ping_id(), procedure=PING, origin=s.region),
                timeout=left,
                policy=for_procedure_calls(self.retry, left),
                region=s.primary_region,
            )
            value = ex.reply.value if isinstance(ex.reply.value, dict) else {}
            lsn = value.get("flush_lsn_int")
            if isinstance(lsn, int):
                return lsn
            # The region's other nodes answer pings too (a standby's, one starting or
            # fenced), in the same queue group: another ping may reach the primary's. Ever
            # further apart: after a failover to another region no node here has a position.
            # Not a ping that could not come back in time: that would end in a timeout,
            # and hide this answer.
            now = time.monotonic()
            if now + pause + (now - asked) >= end:
                raise WriteBusError(
                    f"the bus in {s.primary_region!r} did not report a primary flush LSN: is "
                    "its database the primary (or is the bus older than strong reads)?"
                )
            await asyncio.sleep(pause)
            pause = min(2 * pause, PING_AGAIN_MAX)

    async def primary_pool(self) -> AsyncConnectionPool[Any]:
        """A small pool on the primary (``PRIMARY_DATABASE_URL``), opened on first use."""
        s = self.settings
        if not s.primary_database_url or s.primary_database_url == s.database_url:
            raise StaleReadError(
                "fallback='primary' needs PRIMARY_DATABASE_URL (the primary, as reachable from "
                f"{s.region!r}); it is not set apart from DATABASE_URL",
                lag=None,
                max_lag=0.0,
                region=s.region,
            )
        closes = self._closes
        async with self._opening:
            if self._primary_pool is None:
                pool = await open_pool(
                    s.primary_database_url,
                    name=f"writebus-primary-reads-{s.region}",
                    min_size=0,
                    max_size=4,
                    timeout=s.connect_timeout,
                )
                if self._closes != closes:  # closed while it opened: not kept, not leaked
                    await pool.close()
                    raise not_open("the Database", write=False)
                self._primary_pool = pool
            return self._primary_pool


#: Seconds before a strong read pings the primary region again after a reply from another
#: node of the region (without the primary's flush position), doubling up to the second
#: figure.
PING_AGAIN_AFTER = 0.02
PING_AGAIN_MAX = 0.2


def _ping_id() -> str:
    from writebus.client.writes import new_request_id

    return new_request_id()
