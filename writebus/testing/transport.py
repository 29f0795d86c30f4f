"""An in-process stand-in for a NATS connection: request/reply to local responders.

:class:`LocalNats` implements :class:`writebus.client.transport.NatsClient`. A request on a
subject with a responder (:meth:`LocalNats.serve`) is answered by calling it with the request's
bytes -- in a :class:`~writebus.testing.FakeBus`, a real :class:`writebus.bus.handler.Handler`
-- and the reply bytes come back through the client's own decoding and error mapping
(:mod:`writebus.client.rpc`). A subject nobody serves raises nats-py's ``NoRespondersError``, a
reply later than the timeout its ``TimeoutError``, as a server would.

Like a real worker, a responder keeps running after its caller timed out: the request may
still be applied. :meth:`LocalNats.wait_idle` and :meth:`LocalNats.close` wait for those.

It carries nothing else: no wire, no subscriptions delivering messages (publish is dropped and
subscriptions never receive), no reconnects and no faults of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors

#: ``(body, headers, received)`` -> ``(reply body, reply headers)``: the shape of
#: :data:`writebus.bus.worker.HandleFn`.
ReplyParts = tuple[bytes, dict[str, str] | None]
Responder = Callable[[bytes, dict[str, str] | None, float], Coroutine[Any, Any, ReplyParts]]

#: nats-server's default ``max_payload`` (1 MB).
DEFAULT_MAX_PAYLOAD = 1024 * 1024


@dataclass
class LocalMsg:
    """A reply delivered by :class:`LocalNats`."""

    subject: str
    data: bytes
    headers: dict[str, str] | None = None
    reply: str = ""


class _Inert:
    """A subscription that never receives anything."""

    async def unsubscribe(self, limit: int = 0) -> None:
        """Nothing to stop."""

    async def drain(self) -> None:
        """Nothing buffered."""


class LocalNats:
    """Request/reply within this process; see the module docstring for what it leaves out."""

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._max_payload = max_payload
        self._responders: dict[str, Responder] = {}
        self._running: set[asyncio.Task[ReplyParts]] = set()
        self._closed = False
        #: Requests made so far, by subject.
        self.requests: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<LocalNats subjects={sorted(self._responders)} closed={self._closed}>"

    def serve(self, subject: str, responder: Responder) -> None:
        """Answer requests on ``subject`` (an exact subject, no wildcards) with ``responder``."""
        self._responders[subject] = responder

    @property
    def subjects(self) -> list[str]:
        """The subjects served, sorted."""
        return sorted(self._responders)

    @property
    def max_payload(self) -> int:
        """The largest message, as a server announces it."""
        return self._max_payload

    @property
    def is_connected(self) -> bool:
        """True until :meth:`close`."""
        return not self._closed

    @property
    def is_closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> LocalMsg:
        """Send ``payload`` to the responder of ``subject`` and return its reply."""
        if self._closed:
            raise nats.errors.ConnectionClosedError
        if len(payload) > self._max_payload:
            raise nats.errors.MaxPayloadError
        self.requests[subject] = self.requests.get(subject, 0) + 1
        responder = self._responders.get(subject)
        if responder is None:
            raise nats.errors.NoRespondersError
        task = asyncio.create_task(
            responder(payload, headers, time.monotonic()), name=f"local-nats-{subject}"
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            # shield: a caller that stops waiting does not stop the worker.
            body, reply_headers = await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        return LocalMsg(subject=subject, data=body, headers=reply_headers)

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Dropped: nothing subscribes here."""
        if self._closed:
            raise nats.errors.ConnectionClosedError

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Any = None,
        future: Any = None,
        max_msgs: int = 0,
        pending_msgs_limit: int = 512 * 1024,
        pending_bytes_limit: int = 128 * 1024 * 1024,
    ) -> _Inert:
        """A subscription that never receives (nothing is published here)."""
        if self._closed:
            raise nats.errors.ConnectionClosedError
        return _Inert()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no responder is running (one whose caller timed out may still be)."""
        running = set(self._running)
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=timeout)
        if pending:
            raise TimeoutError(f"{len(pending)} requests still running after {timeout:g}s")

    async def flush(self, timeout: int = 10) -> None:
        """Nothing is buffered."""

    async def drain(self) -> None:
        """Close, letting running responders finish."""
        await self.close()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking requests; wait up to ``timeout`` seconds for running responders, then
        cancel the rest."""
        self._closed = True
        running = set(self._running)
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=timeout)
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*pending, return_exceptions=True)
