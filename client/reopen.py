"""Reopening a NATS connection that nats-py closed for good.

nats-py reconnects after a dropped connection, but closes it for good on most errors the
server sends (``-ERR``): credentials expired or revoked by a configuration reload
(``Authorization Violation``, ``User Authentication Expired``), a server at its connection
limit. A :class:`~writebus.client.db.Database` holding such a connection would fail every
later write "not connected" for the life of the process; its next write opens a new one
instead (:func:`reopened`), and moves the region's tracker onto it.
"""

from __future__ import annotations

from writebus.client.connect import acquire_nats, endpoints, release_nats
from writebus.client.errors import ConnectError, DisconnectedError
from writebus.client.log import get_logger
from writebus.client.settings import Settings
from writebus.client.tracker import LsnTracker
from writebus.client.trackers import acquire_tracker, release_tracker
from writebus.client.transport import NatsClient

log = get_logger("writebus.client.nats")


async def reopened(
    closed: NatsClient, tracker: LsnTracker | None, settings: Settings
) -> tuple[NatsClient, LsnTracker | None]:
    """A new shared connection in place of ``closed`` (released), and a tracker on it in
    place of ``tracker`` (released). Raises :class:`DisconnectedError` -- nothing was sent --
    when the servers still refuse or cannot be reached."""
    name = f"writebus-{settings.region}"  # as Database names it
    log.warning("nats.reopening", connection=name, servers=endpoints(settings.nats_urls),
                reason="the connection was closed for good (the server refused it)")  # fmt: skip
    try:
        nc = await acquire_nats(settings, name=name)
    except ConnectError as exc:
        raise DisconnectedError(f"NATS connection closed, and reopening it failed: {exc}; the "
                                "write was not sent") from exc  # fmt: skip
    await release_nats(closed)
    if tracker is None:
        return nc, None
    moved = await acquire_tracker(settings, nc)
    await release_tracker(tracker)
    return nc, moved
