"""Fixed-type array parameters, read back by the real primary."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from writebus.bus.arrays import ByteaArray, TextArray

AWKWARD = ["", "plain", 'quo"te', "back\\slash", "{brace}", "com,ma", "NULL", "ünï 字", " sp "]


@pytest.fixture
def conn(stack: Any) -> Any:
    with psycopg.connect(stack.primary.url, autocommit=True) as c:
        yield c


@pytest.mark.parametrize("items", [AWKWARD, ["one"], []])
def test_text_array_arrives_as_sent(conn: Any, items: list[str]) -> None:
    """Every string comes back unchanged and in order, typed text[] without a cast."""
    row = conn.execute("SELECT %s, pg_typeof(%s)::text", [TextArray(items)] * 2).fetchone()
    assert row == (items, "text[]")


@pytest.mark.parametrize("items", [[b"", b"\x00\x01\xff", b"x" * 70_000], []])
def test_bytea_array_arrives_as_sent(conn: Any, items: list[bytes]) -> None:
    """Bytes with NULs, empty and large values come back unchanged, typed bytea[]."""
    row = conn.execute("SELECT %s, pg_typeof(%s)::text", [ByteaArray(items)] * 2).fetchone()
    assert [bytes(b) for b in row[0]] == items and row[1] == "bytea[]"


def test_plain_lists_are_untouched(conn: Any) -> None:
    """Only the two marker classes are affected: a plain list still adapts as psycopg decides."""
    row = conn.execute("SELECT pg_typeof(%s)::text", [[1, 2]]).fetchone()
    assert row == ("smallint[]",)
