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


def test_a_reply_swapped_for_an_error_is_the_one_counted() -> None:
    """encode_reply's safety net replaces a reply that does not fit with an error reply, and
    hands that one back: metrics, status and the request log count what was sent (they
    counted "ok")."""
    from writebus.bus.handler import encode_reply
    from writebus.client.protocol import MSGPACK, Reply

    big = Reply(id="r4", ok=True, value="x" * 10_000, region="syd", server_ms=1.5)
    body, sent = encode_reply(big, MSGPACK, 4096)
    assert sent.ok is False and sent.error is not None and sent.error.kind == "limit"
    assert sent.id == "r4" and sent.region == "syd" and sent.server_ms == 1.5
    assert msgpack.unpackb(body)["error"]["kind"] == "limit"
    small = Reply(id="r5", ok=True, value="x", region="syd")
    assert encode_reply(small, MSGPACK, 4096)[1] is small
