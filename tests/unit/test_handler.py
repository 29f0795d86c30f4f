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
    kw = {"write": True, "primary": True, **kw}
    body, _ = await _handler().handle(msgpack.packb(req), None, **kw)
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
    """Validation errors are answered without running anything (here there is no pool). On
    the exactly-once path (a primary's writes) a refusal first looks its id up, in case it
    was applied before the rule came (bus.settle; tests/test_security.py): not here."""
    reply = await _ask({"id": "r2", "statements": [{"sql": "COMMIT"}]}, primary=False)
    assert reply["error"]["kind"] == "protocol"
    reply = await _ask({"id": "r3", "v": 9, "procedure": "p"}, primary=False)
    assert "unsupported protocol version 9" in reply["error"]["message"]


def test_a_reply_swapped_for_an_error_is_the_one_counted_and_says_it_was_applied() -> None:
    """encode_reply's safety net replaces a reply that does not fit with an error reply, and
    hands that one back: metrics, status and the request log count what was sent (they
    counted "ok"). A successful reply is not swapped for "limit" (nothing applied): its
    write was applied, so the error is ``unknown``/``ResultNotSent``, with its position, and
    the client makes it a ResultNotSentError, outcome applied."""
    from writebus.bus.handler import encode_reply
    from writebus.client.errors import Outcome, ResultNotSentError
    from writebus.client.protocol import MSGPACK, Reply
    from writebus.client.wire_errors import RESULT_NOT_SENT, error_from_info

    big = Reply(id="r4", ok=True, value="x" * 10_000, region="syd", server_ms=1.5,
                lsn="0/10", lsn_int=16, timeline=1)  # fmt: skip
    body, sent = encode_reply(big, MSGPACK, 4096)
    assert sent.ok is False and sent.error is not None and sent.error.kind == "unknown"
    assert sent.error.detail == RESULT_NOT_SENT and not sent.error.retryable
    assert sent.id == "r4" and sent.region == "syd" and sent.server_ms == 1.5
    assert (sent.lsn_int, sent.timeline) == (16, 1)
    assert msgpack.unpackb(body)["error"]["detail"] == RESULT_NOT_SENT
    err = error_from_info(sent.error, request_id="r4", lsn=16)
    assert isinstance(err, ResultNotSentError) and err.outcome is Outcome.APPLIED
    assert not err.retryable and err.lsn == 16
    small = Reply(id="r5", ok=True, value="x", region="syd")
    assert encode_reply(small, MSGPACK, 4096)[1] is small
