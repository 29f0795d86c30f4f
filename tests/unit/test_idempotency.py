"""Where the exactly-once claim looks, and where a record goes (pure parts of
:mod:`writebus.bus.idempotency`); the claim itself is tested on the primary in
tests/test_idempotency.py and tests/test_dated_ids.py."""

from __future__ import annotations

import time
import uuid

from writebus.bus import idempotency
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


def test_store_params_carry_each_records_floor() -> None:
    a = new_id(10_000.0)
    params = idempotency.store_params([(a, b"d1", b"r1"), ("job-42", b"d2", b"r2")])
    assert params[0] == [a, "job-42"] and params[1] == [10_000.0 - SLACK, None]
    assert params[2] == [b"d1", b"d2"] and params[3] == [b"r1", b"r2"]
