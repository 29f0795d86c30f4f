"""Postgres WAL positions (LSNs) as 64-bit integers.

Postgres prints an LSN as two hex halves, ``"16/B374D848"``. Comparing the text is wrong
(``"9/0" > "10/0"``); writebus always compares the integer ``(hi << 32) | lo``.
"""

from __future__ import annotations

MAX_LSN = (1 << 64) - 1
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_lsn(text: str) -> int:
    """Parse ``"X/Y"`` into a 64-bit integer; raise :class:`ValueError` on bad input.

    This module sits at the bottom of the wire layer and imports nothing of writebus; the
    protocol decoder turns the ``ValueError`` into a :class:`~writebus.client.errors.ProtocolError`.
    """
    hi, sep, lo = text.partition("/")
    if (
        not sep
        or not 0 < len(hi) <= 8
        or not 0 < len(lo) <= 8
        or not _HEX.issuperset(hi)
        or not _HEX.issuperset(lo)
    ):
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(value: int) -> str:
    """Format a 64-bit integer as Postgres does (``"16/B374D848"``)."""
    if not 0 <= value <= MAX_LSN:
        raise ValueError(f"LSN out of range: {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
