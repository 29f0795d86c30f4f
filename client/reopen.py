"""Reopening a NATS connection that nats-py closed for good.

nats-py reconnects after a dropped connection, but closes it for good on most errors the
server sends (``-ERR``): an expired JWT ("User Authentication Expired"), a server at its
connection limit. A :class:`~writebus.client.db.Database` holding such a connection would
fail every later bus write "not connected" for the life of the process; its next one opens
a new connection instead (re-reading ``NATS_CREDS``), and moves the region's tracker onto
it -- with the callers waiting on the old one (:mod:`writebus.client.handover`). So does a
strong read, which needs the bus. One try at a time: calls arriving meanwhile wait for it
(each within its own timeout; the try goes on), and for :data:`PAUSE` seconds after a failed
try they are refused at once (``DisconnectedError``, not sent) instead of each waiting out a
connect timeout in turn.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from writebus.client.connect import acquire_nats, endpoints, release_nats
from writebus.client.errors import DisconnectedError, WriteBusError
from writebus.client.log import get_logger
from writebus.client.settings import Settings
from writebus.client.tracker import LsnTracker
from writebus.client.trackers import acquire_tracker, release_tracker
from writebus.client.transport import NatsClient

log = get_logger("writebus.client.nats")

#: Seconds after a failed try during which bus writes are refused without another.
PAUSE = 1.0
#: Seconds a call must have left once reopened to be sent: else it is refused, not sent (a
#: request sent with less would end as an unknown outcome it almost surely is not).
MIN_LEFT = 0.05


class Reopener:
    """A Database's reopening of its NATS connection (see the module docstring)."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._failed_at: float | None = None
        #: The try under way has given the Database its new connection: it only lets the
        #: old one go now, which must not be cut short (the old tracker's waiters).
        self._swapped = False

    async def reopen(self, db: Any, timeout: float | None = None) -> None:
        """Give ``db`` (a Database whose own connection is closed for good) a new connection
        and tracker, the old one's waiters handed to it. Raises :class:`DisconnectedError`
        when that fails, or takes more than ``timeout`` seconds (the call's): nothing was
        sent. One reopen runs at a time, for every caller, and a caller's timeout does not
        stop it: a slow one still serves the calls after."""
        if not db._is_open:
            raise DisconnectedError("the Database was closed; nothing was sent")
        task = self._task
        if task is None or task.done():
            if self._failed_at is not None and time.monotonic() - self._failed_at < PAUSE:
                raise DisconnectedError("the NATS connection was closed, and reopening it "
                                        "failed just now; nothing was sent")  # fmt: skip
            task = self._task = asyncio.create_task(self._reopen(db), name="writebus-nats-reopen")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # always retrieved
        wait = None if timeout is None else max(0.0, timeout - MIN_LEFT)  # time left to send
        done, _ = await asyncio.wait({task}, timeout=wait)  # a cancel of this call goes on
        if not done:
            raise DisconnectedError(
                "the NATS connection was closed, and reopening it takes longer than the call "
                f"may wait ({timeout}s; it goes on for the calls after); nothing was sent"
            )
        if task.cancelled():
            raise DisconnectedError("the NATS connection was closed, and the Database closed "
                                    "while it reopened; nothing was sent")  # fmt: skip
        task.result()  # its own DisconnectedError, else reopened

    async def stop(self) -> None:
        """Stop a reopen under way (the Database is closing): what it opened is let go -- or,
        once it gave the Database its new connection, let it finish letting the old one go."""
        task, self._task, self._failed_at = self._task, None, None
        if task is not None and not task.done():
            if not self._swapped:
                task.cancel()
            await asyncio.wait({task})  # its outcome is its callers'; a cancel of ours goes on

    async def _reopen(self, db: Any) -> None:
        closed = db._nc
        if closed is None or not closed.is_closed:
            return  # reopened before, or the Database was closed
        try:
            nc, tracker = await _opened(db.settings, tracker=db._tracker is not None)
        except DisconnectedError:
            self._failed_at = time.monotonic()
            raise
        self._failed_at = None
        if db._nc is not closed:  # closed while it reopened: nothing is the Database's now
            await _release(nc, tracker)
            return
        old, db._nc, db._tracker = db._tracker, nc, tracker
        self._swapped = True
        try:
            await _release(closed, old, successor=tracker)
        except Exception as exc:  # reopened all the same: the calls go on the new connection
            log.warning("nats.old_connection_not_released", error=repr(exc))
        finally:
            self._swapped = False


async def _opened(settings: Settings, *, tracker: bool) -> tuple[NatsClient, LsnTracker | None]:
    name = f"writebus-{settings.region}"  # as Database names it
    log.warning("nats.reopening", connection=name, servers=endpoints(settings.nats_urls),
                reason="the connection was closed for good (the server refused it)")  # fmt: skip
    try:
        nc = await acquire_nats(settings, name=name)
    except WriteBusError as exc:  # ConnectError, ConfigError (NATS_CREDS gone)
        raise DisconnectedError(f"the NATS connection was closed, and reopening it failed: "
                                f"{exc}; nothing was sent") from exc  # fmt: skip
    if not tracker:
        return nc, None
    try:
        return nc, await acquire_tracker(settings, nc)
    except BaseException as exc:  # cancelled too (the call's timeout): let it go
        await release_nats(nc)
        if not isinstance(exc, Exception):
            raise
        raise DisconnectedError(f"the NATS connection was reopened, but its tracker could not "
                                f"start: {exc}; nothing was sent") from exc  # fmt: skip


async def _release(
    nc: NatsClient, tracker: LsnTracker | None, *, successor: LsnTracker | None = None
) -> None:
    if tracker is not None:
        await release_tracker(tracker, successor)
    await release_nats(nc)
