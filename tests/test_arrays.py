"""Fixed-type array parameters, read back by the real primary."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from writebus.bus.arrays import TextArray

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


def test_plain_lists_are_untouched(conn: Any) -> None:
    """Only the marker class is affected: a plain list still adapts as psycopg decides."""
    row = conn.execute("SELECT pg_typeof(%s)::text", [[1, 2]]).fetchone()
    assert row == ("smallint[]",)
