"""An in-memory NATS for unit tests: subjects, wildcards, queue groups, request/reply, faults.

It implements :class:`writebus.client.transport.NatsClient`, so the client's retry, routing and
replay-wait logic can be driven without a server. Several :class:`FakeNats` clients share one
:class:`FakeServer`. It is a fake for pure logic: every path it covers also has a test against a
real nats-server.

Fault injection: :attr:`FakeNats.connected` (False: requests see a disconnected client),
:meth:`FakeServer.drop_replies` (replies lost, as in a server restart after delivery),
:meth:`FakeServer.hold` (requests delivered but not answered until released).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


@dataclass
class FakeMsg:
    """A delivered message."""

    subject: str
    data: bytes
    reply: str = ""
    headers: dict[str, str] | None = None
    _client: FakeNats | None = None

    async def respond(self, data: bytes) -> None:
        """Reply to the sender (echoing headers, as nats-py does)."""
        assert self._client is not None and self.reply
        await self._client.publish(self.reply, data, headers=self.headers)


@dataclass
class FakeSubscription:
    """A subscription on a :class:`FakeServer`."""

    server: FakeServer
    subject: str
    queue: str
    cb: Callable[[Any], Awaitable[None]] | None
    client: FakeNats
    messages: list[FakeMsg] = field(default_factory=list)
    active: bool = True

    async def unsubscribe(self, limit: int = 0) -> None:
        """Stop receiving."""
        self.active = False
        self.server.subs.discard(self)  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Stop receiving (nothing is buffered here)."""
        await self.unsubscribe()

    def __hash__(self) -> int:
        return id(self)


class FakeServer:
    """Routes messages between fake clients."""

    def __init__(self, max_payload: int = 1024 * 1024) -> None:
        self.max_payload = max_payload
        self.subs: set[FakeSubscription] = set()
        self.published: list[tuple[str, bytes]] = []
        self._drop_replies = 0
        self._held: list[asyncio.Event] = []
        self._hold = False
        self._rr = itertools.count()

    def client(self) -> FakeNats:
        """A new connected client."""
        return FakeNats(self)

    def drop_replies(self, count: int) -> None:
        """Lose the next ``count`` replies (the request was delivered and served)."""
        self._drop_replies += count

    def hold(self, on: bool = True) -> None:
        """Deliver requests but keep their replies until :meth:`release` (or forever)."""
        self._hold = on

    def release(self) -> None:
        """Let held replies through."""
        self._hold = False
        for event in self._held:
            event.set()
        self._held.clear()

    async def route(self, subject: str, data: bytes, reply: str, headers: Any) -> int:
        """Deliver to every plain subscriber and one member of each queue group; return how
        many subscribers received it."""
        self.published.append((subject, data))
        if self._is_reply_subject(subject):
            if self._drop_replies:
                self._drop_replies -= 1
                return 1
            if self._hold:
                event = asyncio.Event()
                self._held.append(event)
                await event.wait()
        matching = [s for s in list(self.subs) if s.active and subject_matches(s.subject, subject)]
        groups: dict[str, list[FakeSubscription]] = {}
        chosen: list[FakeSubscription] = []
        for sub in matching:
            if sub.queue:
                groups.setdefault(sub.queue, []).append(sub)
            else:
                chosen.append(sub)
        for members in groups.values():
            chosen.append(members[next(self._rr) % len(members)])
        for sub in chosen:
            msg = FakeMsg(subject, data, reply, headers, sub.client)
            if sub.cb is not None:
                asyncio.get_running_loop().create_task(sub.cb(msg))
            else:
                sub.messages.append(msg)
        return len(chosen)

    @staticmethod
    def _is_reply_subject(subject: str) -> bool:
        return subject.startswith("_INBOX.")


class FakeNats:
    """A client of a :class:`FakeServer` (the subset of nats-py writebus uses)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.connected = True
        self.closed = False
        self.requests = 0
        self._inbox = itertools.count()

    @property
    def max_payload(self) -> int:
        return self.server.max_payload

    @property
    def is_connected(self) -> bool:
        return self.connected and not self.closed

    @property
    def is_closed(self) -> bool:
        return self.closed

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        if self.closed:
            raise nats.errors.ConnectionClosedError
        if len(payload) > self.max_payload:
            raise nats.errors.MaxPayloadError
        if not self.connected:
            return  # lost, as a publish during an outage would be
        await self.server.route(subject, payload, "", headers)

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Any:
        if self.closed:
            raise nats.errors.ConnectionClosedError
        self.requests += 1
        inbox = f"_INBOX.fake.{id(self)}.{next(self._inbox)}"
        got: asyncio.Future[FakeMsg] = asyncio.get_running_loop().create_future()

        async def on_reply(msg: FakeMsg) -> None:
            if not got.done():
                got.set_result(msg)

        sub = await self.subscribe(inbox, cb=on_reply)
        try:
            if not self.connected:
                delivered = 0
            else:
                delivered = await self.server.route(subject, payload, inbox, headers)
            if not delivered:
                raise nats.errors.NoRespondersError
            try:
                return await asyncio.wait_for(got, timeout)
            except TimeoutError:
                raise nats.errors.TimeoutError from None
        finally:
            await sub.unsubscribe()

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Callable[[Any], Awaitable[None]] | None = None,
        future: Any = None,
        max_msgs: int = 0,
        pending_msgs_limit: int = 0,
        pending_bytes_limit: int = 0,
    ) -> FakeSubscription:
        sub = FakeSubscription(self.server, subject, queue, cb, self)
        self.server.subs.add(sub)
        return sub

    async def flush(self, timeout: int = 10) -> None:
        await asyncio.sleep(0)

    async def drain(self) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        for sub in [s for s in self.server.subs if s.client is self]:
            await sub.unsubscribe()
