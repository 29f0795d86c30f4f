"""LSN parsing, formatting and ordering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from writebus.client.lsn import MAX_LSN, format_lsn, parse_lsn


def test_parse_known_values() -> None:
    """Postgres' text form maps to (hi << 32) | lo."""
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert parse_lsn("FFFFFFFF/FFFFFFFF") == MAX_LSN


def test_integer_order_is_not_text_order() -> None:
    """'9/0' sorts after '10/0' as text but is the smaller position."""
    assert "9/0" > "10/0"
    assert parse_lsn("9/0") < parse_lsn("10/0")
    assert parse_lsn("0/FFFFFFFF") < parse_lsn("1/0")


@pytest.mark.parametrize("bad", ["", "0", "/1", "1/", "x/1", "1/2/3", "123456789/0", "1/-2"])
def test_bad_text_is_a_value_error(bad: str) -> None:
    """Malformed LSN text raises ValueError (the protocol decoder wraps it)."""
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn(bad)


@given(st.integers(min_value=0, max_value=MAX_LSN))
def test_round_trip(value: int) -> None:
    """format then parse is the identity over the whole 64-bit range."""
    assert parse_lsn(format_lsn(value)) == value


@given(st.integers(0, MAX_LSN), st.integers(0, MAX_LSN))
def test_order_preserved(a: int, b: int) -> None:
    """Comparing parsed integers agrees with comparing the original integers."""
    assert (parse_lsn(format_lsn(a)) < parse_lsn(format_lsn(b))) == (a < b)


def test_format_rejects_out_of_range() -> None:
    """Negative or over-64-bit values are refused."""
    with pytest.raises(ValueError):
        format_lsn(-1)
    with pytest.raises(ValueError):
        format_lsn(MAX_LSN + 1)
