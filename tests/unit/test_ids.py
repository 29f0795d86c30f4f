"""Request ids (:mod:`writebus.client.ids`): UUIDv7, and reading their date back."""

from __future__ import annotations

import secrets
import uuid

import pytest

from writebus.client.ids import id_time, new_id
from writebus.client.writes import new_request_id


def test_a_new_id_is_a_canonical_uuid7_dated_to_the_millisecond() -> None:
    rid = new_id(1_700_000_000.1234)
    parsed = uuid.UUID(rid)
    assert len(rid) == 36 and str(parsed) == rid
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert id_time(rid) == 1_700_000_000.123


def test_ids_are_random_and_the_library_makes_dated_ones() -> None:
    ids = {new_id(1.0) for _ in range(1000)}
    assert len(ids) == 1000  # 74 random bits each, same millisecond
    assert id_time(new_request_id()) is not None


@pytest.mark.parametrize(
    "rid",
    [
        str(uuid.uuid4()),  # version 4
        new_id().replace("-", ""),  # bare hex: what random or digest ids look like
        "7" * 32,
        new_id().upper(),
        new_id()[:19] + "c" + new_id()[20:],  # variant bits not 10
        new_id()[:35],
        "job-42",
        "",
        " " + new_id()[1:],
        new_id()[:8] + "_" + new_id()[9:],
    ],
)
def test_other_ids_have_no_date(rid: str) -> None:
    assert id_time(rid) is None


def test_random_hex_ids_are_never_taken_for_dated_ones() -> None:
    """One in 64 random 32-digit hex ids has UUIDv7's version and variant digits."""
    assert all(id_time(secrets.token_hex(16)) is None for _ in range(5000))
