"""Request ids (:mod:`writebus.client.ids`): UUIDv7, and reading their date back."""

from __future__ import annotations

import uuid

import pytest

from writebus.client.ids import id_time, new_id
from writebus.client.writes import new_request_id


def test_a_new_id_is_a_uuid7_in_32_hex_digits_dated_to_the_millisecond() -> None:
    rid = new_id(1_700_000_000.1234)
    parsed = uuid.UUID(hex=rid)
    assert len(rid) == 32 and rid == rid.lower() and parsed.hex == rid
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert id_time(rid) == 1_700_000_000.123
    assert id_time(str(parsed)) == 1_700_000_000.123  # the dashed form reads the same


def test_ids_are_random_and_the_library_makes_dated_ones() -> None:
    ids = {new_id(1.0) for _ in range(1000)}
    assert len(ids) == 1000  # 74 random bits each, same millisecond
    assert id_time(new_request_id()) is not None


@pytest.mark.parametrize(
    "rid",
    [
        uuid.uuid4().hex,  # version 4
        "0x" + new_id()[2:],  # int() would take it; not 32 hex digits
        new_id()[:16] + "c" + new_id()[17:],  # variant bits not 10
        new_id()[:31],
        "job-42",
        "",
        " " + new_id()[1:],
        new_id()[:8] + "_" + new_id()[9:],
    ],
)
def test_other_ids_have_no_date(rid: str) -> None:
    assert id_time(rid) is None
