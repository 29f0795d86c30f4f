"""What a write's try says after the try before it lost its connection with COMMIT in flight
(:func:`writebus.bus.execute.after_lost_commit`, pure); the path itself, with a real proxy cut
under a real COMMIT, is tested in tests/faults/test_connection_loss.py."""

from __future__ import annotations

import pytest

from writebus.bus.execute import after_lost_commit
from writebus.bus.group import Executed, Lost
from writebus.client.errors import (
    LimitError,
    Outcome,
    OutcomeUnknownError,
    ProcedureError,
    UnavailableError,
    WriteRejectedError,
)
from writebus.client.protocol import Request

REQ = Request(id="r1", procedure="p")
CUT = ConnectionError("server closed the connection unexpectedly")
LOST = Lost(CUT, committing=True)


def test_a_not_applied_answer_from_before_the_claim_becomes_unknown() -> None:
    """No connection, the claim or COMMIT refused, a procedure failing: the lost try may have
    committed, so the answer cannot be "not applied"."""
    for err in (
        UnavailableError("database unavailable: pool timeout"),
        WriteRejectedError("cannot execute in a read-only transaction", sqlstate="25006"),
        ProcedureError("boom", procedure="p"),
        LimitError("the reply would take too many bytes"),
    ):
        out = after_lost_commit(REQ, err, LOST)
        assert isinstance(out, OutcomeUnknownError) and out.outcome is Outcome.UNKNOWN
        assert out.request_id == "r1" and out.last_error is err and out.__cause__ is err
        assert "COMMIT was in flight" in str(out) and str(err) in str(out)


def test_answers_that_settle_the_outcome_stand() -> None:
    """A statement's error came after the claim looked the id up and found it unapplied; a
    result (or a duplicate's) and an unknown need nothing."""
    statement = WriteRejectedError("duplicate key", sqlstate="23505", statement_index=0)
    done = Executed([], lsn=1, duplicate=True)
    unknown = OutcomeUnknownError("r1", "again")
    for out in (statement, done, unknown):
        assert after_lost_commit(REQ, out, LOST) is out


def test_a_try_lost_before_its_commit_leaves_the_next_answer_as_it_is() -> None:
    """Lost before COMMIT was sent, the first try cannot have committed: the next try's
    "not applied" is the write's."""
    err = UnavailableError("database unavailable: pool timeout")
    assert after_lost_commit(REQ, err, Lost(CUT, committing=False)) is err


def test_a_json_reply_counts_its_header_against_the_payload_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-server counts a message's headers against max_payload, and a JSON reply carries
    a Content-Type header (44 bytes as nats-py writes it): a reply whose body alone fits, but
    not with its header, is refused before COMMIT -- published, it cost the node its NATS
    connection. A msgpack reply has no header."""
    from writebus.bus import execute
    from writebus.bus.execute import Limits, _check_reply_size, reply_header_bytes
    from writebus.client.errors import LimitError
    from writebus.client.protocol import JSON, MSGPACK, Request, Statement
    from writebus.client.protocol import StatementResult as SR

    results = [SR(rowcount=1, columns=["a"], rows=[["x" * 1000]])]
    req = Request(id="r", statements=[Statement(sql="SELECT 1")])

    def smallest_limit(encoding: str) -> int:
        low, high = 1, 1 << 20
        while low < high:
            mid = (low + high) // 2
            try:
                _check_reply_size(req, results, None, Limits(max_reply_bytes=mid), encoding, "s")
                high = mid
            except LimitError:
                low = mid + 1
        return low

    header = len(b"NATS/1.0\r\nContent-Type: application/json\r\n\r\n")
    assert reply_header_bytes(JSON) == header == 44 and reply_header_bytes(MSGPACK) == 0
    with_header = smallest_limit(JSON)
    monkeypatch.setattr(execute, "reply_header_bytes", lambda encoding: 0)
    assert with_header == smallest_limit(JSON) + header
