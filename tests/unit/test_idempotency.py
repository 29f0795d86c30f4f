"""Where the exactly-once claim looks, and where a record goes (pure parts of
:mod:`writebus.bus.idempotency`); the claim itself is tested on the primary in
tests/test_idempotency.py and tests/test_dated_ids.py."""

from __future__ import annotations

import datetime
import time
import uuid

import pytest

from writebus.bus import idempotency, partitions
from writebus.client.ids import new_id

SLACK = idempotency.ID_CLOCK_SLACK


def test_a_dated_ids_record_is_no_earlier_than_its_date_less_the_slack() -> None:
    assert idempotency.record_floor(new_id(10_000.0)) == 10_000.0 - SLACK
    assert idempotency.record_floor("job-42") is None


def test_an_id_dated_past_the_horizon_is_taken_as_undated() -> None:
    now = time.time()
    far = new_id(now + idempotency.ID_DATE_HORIZON + 60)
    near = new_id(now + idempotency.ID_DATE_HORIZON - 60)
    assert idempotency.record_floor(far, now) is None
    assert idempotency.record_floor(near, now) is not None
    assert idempotency.lookup_since([far]) is None


def test_a_claim_looks_from_the_earliest_floor_only_when_every_id_is_dated() -> None:
    a, b = new_id(10_000.0), new_id(20_000.0)
    assert idempotency.lookup_since([b, a]) == 10_000.0 - SLACK
    assert idempotency.lookup_since([a, str(uuid.uuid4())]) is None
    assert idempotency.lookup_since([]) is None
    assert idempotency.claim_params([a])[1] == 10_000.0 - SLACK


def test_the_claim_of_unseen_ids_only_locks_them() -> None:
    """Unseen ids (a primary-region client's own, in their first try) are claimed by the
    function that locks without looking up, with the ids alone; the others look up from
    their floor, a group's first try with the function that stops its statements."""
    a = new_id(10_000.0)
    assert idempotency.claim_sql() == idempotency.CLAIM_SQL
    assert idempotency.claim_sql(first_try=True) == idempotency.CLAIM_FRESH_SQL
    for first_try in (False, True):
        assert idempotency.claim_sql(unseen=True, first_try=first_try) == (
            idempotency.CLAIM_UNSEEN_SQL
        )
    assert "claim_unseen_v3(%s::text[])" in idempotency.CLAIM_UNSEEN_SQL
    assert idempotency.claim_params([a], unseen=True, array=list) == [[a]]
    assert idempotency.claim_params([a], array=list) == [[a], 10_000.0 - SLACK]


def test_store_statement_carries_each_records_floor() -> None:
    a = new_id(10_000.0)
    sql, params = idempotency.store_statement([(a, b"d1", b"r1"), ("job-42", b"d2", b"r2")])
    assert sql == idempotency.STORE_VALUES_SQL + ", ".join([idempotency.STORE_ROW_SQL] * 2)
    assert params[0::4] == [a, "job-42"] and params[1::4] == [10_000.0 - SLACK, None]
    assert params[2::4] == [b"d1", b"d2"] and params[3::4] == [b"r1", b"r2"]


def test_a_claim_looks_everywhere_when_an_id_is_dated_far_ahead() -> None:
    """An id stored as undated (past the horizon then) reads as dated once the clock gets
    within the horizon -- minutes later on a worker whose clock is ahead: while it is that far
    ahead, its lookups go everywhere and still find the record stored at ``now()``."""
    now = time.time()
    edge = new_id(now + idempotency.ID_DATE_HORIZON - 60)
    assert idempotency.record_floor(edge, now) is not None  # dated by now
    assert idempotency.lookup_since([edge]) is None
    assert idempotency.lookup_since([new_id(now), new_id(now + 2 * 86400)]) is None
    hour_ahead = idempotency.lookup_since([new_id(now + 3600)])
    assert hour_ahead is not None and abs(hour_ahead - now) < 5


def test_only_an_id_whose_record_cannot_be_kept_runs_alone() -> None:
    now = time.time()
    assert idempotency.far_ahead(new_id(now + 3 * 3600), now)
    assert not idempotency.far_ahead(new_id(now + 1.5 * 3600), now)
    assert not idempotency.far_ahead(new_id(now), now)
    assert not idempotency.far_ahead("job-42", now)
    assert not idempotency.far_ahead(new_id(now + 20 * 365 * 86400), now)  # undated


def test_a_floor_that_may_join_a_group_always_has_a_partition() -> None:
    """Whatever the minute, and with the last maintenance pass up to a span before it (the
    hour turned, partitions not yet made), the partitions made reach past ``now +
    RECORD_AHEAD``: an id :func:`far_ahead` lets into a group can be recorded."""
    span = partitions.PARTITION_SPAN
    hour = 1_800_000_000 // span * span
    for minute in range(0, 60, 7):
        now = hour + minute * 60 + 13.5
        for lag in (0.0, span / 2, span):
            made = partitions.partition_bounds(
                datetime.datetime.fromtimestamp(now - lag, datetime.UTC)
            )
            assert made[-1][1].timestamp() >= now + idempotency.RECORD_AHEAD


def test_a_request_sent_directly_and_received_over_the_bus_has_one_digest() -> None:
    """The digest stored with an applied id is of the parameters as the wire carries them: a
    request run directly (Python objects, psycopg's Jsonb among them) and the same request
    received over the bus (decoded) match, so a resend under the id by the other path is
    answered from the record -- not refused as another request."""
    import decimal

    from psycopg.types.json import Json, Jsonb

    from writebus.client.protocol import Request, Statement, decode, encode

    req = Request(id="r", statements=[Statement(
        sql="INSERT INTO t VALUES (%s, %s, %s, %s, %s)",
        params=[Jsonb({"a": [1, "x"]}), Json([None]), decimal.Decimal("1.50"), uuid.uuid4(),
                datetime.datetime(2026, 11, 29, tzinfo=datetime.UTC)],
    )])  # fmt: skip
    received = decode(encode(req), Request)
    assert idempotency.request_digest(req) == idempotency.request_digest(received)
    assert received.statements is not None and received.statements[0].params is not None
    assert received.statements[0].params[:2] == ['{"a": [1, "x"]}', "[null]"]


def test_a_record_digested_with_its_maps_in_order_still_matches() -> None:
    """Digests sort maps by key; a record an earlier release stored (maps in the order they
    came) still answers a resend of the same request, and another request is still refused."""
    from writebus.client.errors import IdempotencyKeyReusedError
    from writebus.client.protocol import Request

    req = Request(id="r", procedure="p", kwargs={"b": 1, "a": {"y": 2, "x": 3}})
    reordered = Request(id="r", procedure="p", kwargs={"a": {"x": 3, "y": 2}, "b": 1})
    digest = idempotency.request_digest(req)
    assert digest == idempotency.request_digest(reordered)
    legacy = idempotency._digest(req, idempotency._legacy_digest_encoder)
    assert legacy != digest
    idempotency.check_digest(req, legacy, digest)
    idempotency.check_digest(req, None, digest)
    other = Request(id="r", procedure="p", kwargs={"b": 2, "a": {"y": 2, "x": 3}})
    with pytest.raises(IdempotencyKeyReusedError):
        idempotency.check_digest(other, legacy, idempotency.request_digest(other))


def test_json_parameters_dump_as_psycopg_would_or_are_refused() -> None:
    """A Jsonb's own dumps wins, then the one psycopg's set_json_dumps set globally; what
    neither can dump is a ProtocolError (not applied), not a bare TypeError."""
    import json

    import pytest
    from psycopg.types.json import Jsonb, set_json_dumps

    from writebus.client.errors import ProtocolError
    from writebus.client.protocol import Request, Statement, decode, encode

    def first(value: object) -> object:
        req = Request(id="r", statements=[Statement(sql="SELECT %s", params=[value])])
        params = decode(encode(req), Request).statements[0].params  # type: ignore[index]
        return params[0]  # type: ignore[index]

    assert first(Jsonb({"a": 1}, dumps=lambda o: "custom")) == "custom"
    with pytest.raises(ProtocolError, match="Jsonb parameter cannot be dumped"):
        first(Jsonb({"when": datetime.date(2026, 1, 1)}))
    set_json_dumps(lambda o: json.dumps(o, default=str))
    try:
        assert first(Jsonb({"when": datetime.date(2026, 1, 1)})) == '{"when": "2026-01-01"}'
    finally:
        set_json_dumps(json.dumps)


def test_a_stored_result_holds_values_as_the_reply_carried_them() -> None:
    """A duplicate is answered with the value the first reply carried: a procedure's Jsonb as
    its JSON text (it was the object's Python text, ``Jsonb({'a': 1})``)."""
    from psycopg.types.json import Jsonb

    from writebus.client.protocol import Reply, decode, encode

    value = {"doc": Jsonb({"a": 1})}
    stored = idempotency._decoder.decode(idempotency.encode_result([], value))
    replied = decode(encode(Reply(id="r", ok=True, value=value)), Reply)
    assert stored.value == replied.value == {"doc": '{"a": 1}'}
