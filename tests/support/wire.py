"""A raw NATS peer for hostile-input tests: plain msgpack/JSON, no writebus client code.

Hypothesis drives test functions synchronously, while nats-py needs a running event loop. A
:class:`WirePeer` owns a private event loop in a thread with its own NATS connection, so a sync
test can send one request per example without touching the session's loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgpack
import nats

T = TypeVar("T")


def decode_reply(data: bytes, headers: dict[str, str] | None) -> dict[str, Any]:
    """A reply decoded with plain msgpack or json, as a peer in another language would."""
    content_type = (headers or {}).get("Content-Type", "")
    if "json" in content_type:
        value = json.loads(data)
    else:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert isinstance(value, dict), f"reply is not a map: {value!r}"
    return value


class WirePeer:
    """A NATS connection on its own event loop thread; every call blocks until done."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="wire-peer-loop", daemon=True
        )
        self._thread.start()
        self.nc: Any = self.run(nats.connect(url, **options))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the peer's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Send raw bytes as a request and return the decoded reply.

        A missing reply raises ``nats.errors.TimeoutError`` -- for these tests, a stalled worker.
        """
        msg = self.run(self.nc.request(subject, data, headers=headers, timeout=timeout))
        return decode_reply(msg.data, msg.headers)

    @property
    def max_payload(self) -> int:
        """The server's max payload as announced in its INFO."""
        return int(self.nc.max_payload)

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        try:
            self.run(self.nc.close(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
