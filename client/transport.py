"""The part of a NATS client writebus uses, as Protocols.

nats-py's ``nats.aio.client.Client`` satisfies :class:`NatsClient`; so does an in-memory fake in
the tests. Everything that talks to NATS (the client's requests, the tracker, the bus workers and
monitors) is typed against these, so an application can hand in a connection it already has and
the retry, routing and replay-wait logic can be tested without a server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Msg(Protocol):
    """A received message."""

    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None


class Subscription(Protocol):
    """A subscription handle."""

    async def unsubscribe(self, limit: int = 0) -> None: ...

    async def drain(self) -> None: ...


MsgHandler = Callable[[Any], Awaitable[None]]


class NatsClient(Protocol):
    """The NATS operations writebus performs."""

    @property
    def max_payload(self) -> int: ...

    @property
    def is_connected(self) -> bool: ...

    @property
    def is_closed(self) -> bool: ...

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Any: ...

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None: ...

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: MsgHandler | None = None,
        future: Any = None,
        max_msgs: int = 0,
        pending_msgs_limit: int = 512 * 1024,
        pending_bytes_limit: int = 128 * 1024 * 1024,
    ) -> Any: ...

    async def flush(self, timeout: int = 10) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...
