"""The once-a-second status message of a bus node (``<prefix>.status.<region>``, JSON).

:class:`StatusWindow` is an observer of served requests that keeps totals and the current
interval's latencies (pure); :class:`StatusPublisher` closes the interval every second and
publishes a :class:`~writebus.client.protocol.Status` built from it and the node's readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from writebus.bus.served import Served
from writebus.client.log import get_logger
from writebus.client.protocol import JSON, Status, encode
from writebus.client.transport import NatsClient

log = get_logger("writebus.bus.status")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank; None when empty."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


class StatusWindow:
    """Counts served requests and errors; keeps the current interval's times."""

    def __init__(self) -> None:
        self.served = 0
        self.errors: Counter[str] = Counter()
        self._times: list[float] = []
        self._errors: Counter[str] = Counter()

    def __call__(self, served: Served) -> None:
        self.served += 1
        self._times.append(served.total_ms)
        if served.outcome != "ok":
            self.errors[served.outcome] += 1
            self._errors[served.outcome] += 1

    def take(self) -> tuple[int, dict[str, int], float | None, float | None]:
        """Close the interval: (requests, errors by kind, p50 ms, p99 ms) since the last take."""
        times, self._times = sorted(self._times), []
        errors, self._errors = dict(self._errors), Counter()
        return len(times), errors, percentile(times, 0.5), percentile(times, 0.99)


class StatusPublisher:
    """Publishes the node's :class:`Status` every ``interval`` seconds.

    ``readings`` returns the node's current fields (role, in-flight, pool, lag...), merged over
    the window's figures.
    """

    def __init__(
        self,
        nc: NatsClient,
        subject: str,
        window: StatusWindow,
        readings: Callable[[], dict[str, Any]],
        *,
        interval: float = 1.0,
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.window = window
        self.readings = readings
        self.interval = interval
        self.published = 0
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start publishing (a named task)."""
        self._task = asyncio.create_task(self._run(), name=f"status-{self.subject}")

    async def stop(self) -> None:
        """Stop publishing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def build(self, elapsed: float) -> Status:
        """The status for an interval of ``elapsed`` seconds (closes the window's interval)."""
        count, errors, p50, p99 = self.window.take()
        fields: dict[str, Any] = dict(
            time=time.time(),
            uptime=time.monotonic() - self.started,
            interval=elapsed,
            served=self.window.served,
            served_interval=count,
            errors=dict(self.window.errors),
            errors_interval=errors,
            p50_ms=p50,
            p99_ms=p99,
        )
        fields.update(self.readings())
        return Status(**fields)

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)  # the publishing cadence
            now = time.monotonic()
            try:
                body = encode(self.build(now - last), JSON)
                await self.nc.publish(self.subject, body, headers={"Content-Type": JSON})
                self.published += 1
            except Exception as exc:  # NATS down, or a reading failed: try next interval
                log.warning("status.publish_failed", subject=self.subject, error=str(exc))
            last = now
