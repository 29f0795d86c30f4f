"""The worker's request handler, for what it decides before touching a database."""

from __future__ import annotations

import time
from typing import Any

import msgpack

from writebus.bus.handler import Handler
from writebus.client.procedures import Procedures


def _handler() -> Handler:
    return Handler(pool=None, procedures=Procedures(), region="syd")  # type: ignore[arg-type]


async def _ask(req: dict[str, Any], **kw: Any) -> dict[str, Any]:
    body, _ = await _handler().handle(msgpack.packb(req), None, write=True, primary=True, **kw)
    return msgpack.unpackb(body)


async def test_request_past_its_timeout_is_not_run() -> None:
    """A request that waited in the worker longer than its timeout_ms is answered
    'unavailable' (retryable) without running: its caller has moved on."""
    req = {"id": "r1", "statements": [{"sql": "SELECT 1"}], "timeout_ms": 50}
    reply = await _ask(req, received=time.monotonic() - 1.0)
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "unavailable" and reply["error"]["retryable"] is True
    assert "not run" in reply["error"]["message"] and reply["id"] == "r1"


async def test_invalid_requests_are_answered_without_a_database() -> None:
    """Validation errors never reach the pool (here: there is none)."""
    reply = await _ask({"id": "r2", "statements": [{"sql": "COMMIT"}]})
    assert reply["error"]["kind"] == "protocol"
    reply = await _ask({"id": "r3", "v": 9, "procedure": "p"})
    assert "unsupported protocol version 9" in reply["error"]["message"]
