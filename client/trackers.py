"""One LSN tracker per process, region and database: :func:`acquire_tracker` starts it on first
use and shares it; the last :func:`release_tracker` closes it."""

from __future__ import annotations

import asyncio
from typing import Any

from writebus.client.loops import loop_lock
from writebus.client.settings import Settings
from writebus.client.tracker import LsnTracker
from writebus.client.transport import NatsClient

_trackers: dict[tuple[Any, ...], tuple[LsnTracker, int]] = {}
_locks: dict[int, asyncio.Lock] = {}


def _key(settings: Settings, nc: NatsClient) -> tuple[Any, ...]:
    return (
        id(nc),
        settings.prefix,
        settings.region,
        settings.database_url,
        settings.replica_id,
        id(asyncio.get_running_loop()),
    )


def _registry_lock() -> asyncio.Lock:
    return loop_lock(_locks)


async def acquire_tracker(settings: Settings, nc: NatsClient) -> LsnTracker:
    """The process's tracker for this region and database on connection ``nc``, started on
    first use."""
    async with _registry_lock():
        key = _key(settings, nc)
        entry = _trackers.get(key)
        if entry is None:
            tracker = LsnTracker(settings, nc)
            try:
                await tracker.start()
            except BaseException:  # cancelled, or the server refused: nothing left running
                await tracker.close()
                raise
            _trackers[key] = (tracker, 1)
            return tracker
        _trackers[key] = (entry[0], entry[1] + 1)
        return entry[0]


async def release_tracker(tracker: LsnTracker, successor: LsnTracker | None = None) -> None:
    """Give back a tracker from :func:`acquire_tracker`; the last release closes it, handing
    its waiters to ``successor`` when given (the same region's tracker on a new connection)."""
    async with _registry_lock():
        for key, (t, refs) in list(_trackers.items()):
            if t is tracker:
                if refs > 1:
                    _trackers[key] = (t, refs - 1)
                    return
                del _trackers[key]
                break
    await tracker.close(successor)


