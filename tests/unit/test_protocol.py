"""Wire protocol: encodings, validation, versioning."""

from __future__ import annotations

import msgpack
import pytest

from writebus.client.errors import ProtocolError
from writebus.client.protocol import (
    JSON,
    MSGPACK,
    LsnUpdate,
    Reply,
    Request,
    Statement,
    decode,
    encode,
    encoding_of,
    validate_request,
)


def test_msgpack_is_a_plain_map() -> None:
    """Requests are msgpack maps keyed by field name, readable by any msgpack library."""
    req = Request(id="r1", statements=[Statement(sql="SELECT %s", params=[1])])
    raw = msgpack.unpackb(encode(req))
    assert raw == {"id": "r1", "statements": [{"sql": "SELECT %s", "params": [1]}]}


def test_plain_msgpack_request_decodes() -> None:
    """A request packed by a plain msgpack library decodes into a Request."""
    data = msgpack.packb({"v": 1, "id": "x", "procedure": "p", "args": [1, "a"]})
    req = decode(data, Request, MSGPACK)
    assert req.procedure == "p" and req.args == [1, "a"]


def test_unknown_fields_are_ignored() -> None:
    """New fields added by a newer peer do not break an older reader."""
    data = msgpack.packb({"id": "x", "procedure": "p", "future_field": {"a": 1}})
    assert decode(data, Request, MSGPACK).id == "x"


def test_json_round_trip_and_sniffing() -> None:
    """JSON is chosen by header or by a body starting with '{'."""
    assert encoding_of({"Content-Type": "application/json"}, b"\x81") == JSON
    assert encoding_of(None, b'{"id":"a"}') == JSON
    assert encoding_of(None, b"\x81\xa2id") == MSGPACK
    reply = Reply(id="a", lsn="0/10", lsn_int=16)
    assert decode(encode(reply, JSON), Reply, JSON) == reply


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x92\x01\x02", msgpack.packb({"statements": []}), msgpack.packb([1, 2])],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    """Undecodable or wrongly shaped bytes raise ProtocolError."""
    with pytest.raises(ProtocolError):
        decode(data, Request, MSGPACK)


def test_wrong_types_are_protocol_errors() -> None:
    """A field of the wrong type is reported with its path."""
    with pytest.raises(ProtocolError, match="statements"):
        decode(msgpack.packb({"id": "x", "statements": "DROP TABLE"}), Request, MSGPACK)


@pytest.mark.parametrize(
    ("req", "kind", "match"),
    [
        (Request(id="a", v=2, procedure="p"), "protocol", "version 2"),
        (Request(id="", procedure="p"), "protocol", "request id"),
        (Request(id="a"), "protocol", "exactly one"),
        (Request(id="a", procedure="p", statements=[Statement(sql="x")]), "protocol", "exactly"),
        (Request(id="a", statements=[]), "protocol", "empty"),
        (Request(id="a", statements=[Statement(sql=" ")]), "protocol", "empty SQL"),
        (Request(id="a", statements=[Statement(sql="x")] * 1001), "limit", "limit"),
    ],
)
def test_validation(req: Request, kind: str, match: str) -> None:
    """Invalid requests are refused with a clear message and the right kind."""
    with pytest.raises(ProtocolError, match=match) as info:
        validate_request(req)
    assert info.value.kind == kind


def test_rpc_subjects_refuse_statements() -> None:
    """Statements are only accepted on the write subject."""
    with pytest.raises(ProtocolError, match="procedures only"):
        validate_request(Request(id="a", statements=[Statement(sql="x")]), allow_statements=False)


def test_lsn_update_fields() -> None:
    """Progress broadcasts carry region, replica id, LSN text and integer, time, recovery flag
    (version 1), then the fields added with defaults: primary position, lag, replay time,
    sender version."""
    upd = LsnUpdate(region="lax", replica_id="r", lsn="0/10", lsn_int=16, time=1.5,
                    in_recovery=True, role="replica")
    raw = msgpack.unpackb(encode(upd))
    assert raw == {"region": "lax", "replica_id": "r", "lsn": "0/10", "lsn_int": 16,
                   "time": 1.5, "in_recovery": True, "role": "replica", "v": 1,
                   "primary_lsn": None, "primary_lsn_int": None, "lag_bytes": None,
                   "lag_seconds": None, "replay_timestamp": None, "version": ""}
    v1 = msgpack.packb({k: raw[k] for k in list(raw)[:8]})
    assert decode(v1, LsnUpdate) == upd  # a version-1 sender is still understood


def test_reply_values_of_postgres_types_encode() -> None:
    """Decimal, UUID, dates and other Postgres values encode (as text where msgpack lacks them)."""
    import datetime
    import decimal
    import ipaddress
    import uuid

    reply = Reply(id="a", value=[decimal.Decimal("1.5"), uuid.UUID(int=1),
                                 datetime.date(2026, 1, 2), ipaddress.ip_address("10.0.0.1")])
    out = msgpack.unpackb(encode(reply), timestamp=3)
    assert out["value"][0] == "1.5" and out["value"][3] == "10.0.0.1"


@pytest.mark.parametrize("sql", ["COMMIT", " rollback", "/* c */ BEGIN", "-- x\nEND",
                                 "SAVEPOINT a", "release a", "PREPARE TRANSACTION 'x'",
                                 "start transaction"])
def test_transaction_control_is_refused(sql: str) -> None:
    """Statements that would end the request's own transaction (and its exactly-once record)
    are refused before anything runs."""
    with pytest.raises(ProtocolError, match="controls the transaction"):
        validate_request(Request(id="a", statements=[Statement(sql="SELECT 1"),
                                                     Statement(sql=sql)]))


@pytest.mark.parametrize("sql", ["UPDATE t SET end_at = now()", "SELECT begin_x()",
                                 "INSERT INTO commits VALUES (1)"])
def test_ordinary_statements_pass(sql: str) -> None:
    """Words like 'end' or 'commit' inside ordinary statements are fine."""
    validate_request(Request(id="a", statements=[Statement(sql=sql)]))
