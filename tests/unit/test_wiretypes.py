"""Result values loaded by column type (pure logic; the real-server parity test is
tests/test_parity.py::test_returned_values_have_the_types_a_read_gives)."""

from __future__ import annotations

import datetime
import ipaddress
import uuid
from decimal import Decimal

import pytest

from writebus.client.wiretypes import parse_duration, typed_rows

NUMERIC, UUID, BYTEA, TSTZ, TEXT, NUMERIC_ARRAY, INET = 1700, 2950, 17, 1184, 25, 1231, 869


def test_json_forms_load_as_psycopg_would() -> None:
    """A JSON reply's forms: bytea as base64, timestamptz as RFC 3339 text with Z."""
    rows = [["1.50", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "AAH/", "2026-01-01T17:04:05.250000Z",
             "1.50", [["1", None]], "192.168.0.1/24"]]  # fmt: skip
    (row,) = typed_rows(rows, [NUMERIC, UUID, BYTEA, TSTZ, TEXT, NUMERIC_ARRAY, INET])
    assert row == [
        Decimal("1.50"),
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        b"\x00\x01\xff",
        datetime.datetime(2026, 1, 1, 17, 4, 5, 250000, tzinfo=datetime.UTC),
        "1.50",  # a text column stays text
        [[Decimal("1"), None]],
        ipaddress.ip_interface("192.168.0.1/24"),
    ]


def test_values_that_are_not_text_and_untyped_results_pass_through() -> None:
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)  # msgpack's timestamp
    rows = [[when, b"\x00", None]]
    assert typed_rows(rows, [TSTZ, BYTEA, NUMERIC]) == rows
    assert typed_rows(rows, None) is rows  # a worker before `types`, or a stored old result
    assert typed_rows([["x"]], [TEXT]) == [["x"]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("P1DT30.5S", datetime.timedelta(days=1, seconds=30.5)), ("-PT60S", -datetime.timedelta(seconds=60)),
     ("P0D", datetime.timedelta(0))],
)  # fmt: skip
def test_durations(text: str, expected: datetime.timedelta) -> None:
    assert parse_duration(text) == expected
