"""Request ids: random, and dated, so the primary finds their exactly-once record quickly.

A request id is any string of 1 to 128 characters. The ones writebus makes (:func:`new_id`) are
UUIDv7 (RFC 9562) in 32 hex digits: 48 bits of Unix milliseconds, the version, then 74 random
bits. A worker that reads a date from an id (:func:`id_time`) looks its record up only in the
exactly-once table's partitions from about then on, instead of in every partition of the
retention window (:mod:`writebus.bus.idempotency`); any other id is looked up everywhere, as
before. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Final

_HEX32: Final = re.compile(r"[0-9a-fA-F]{32}")


def new_id(now: float | None = None) -> str:
    """A fresh UUIDv7 id in 32 lowercase hex digits, dated ``now`` (Unix seconds; default:
    the current time)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFF_FFFF_FFFF
    rand_a = secrets.randbits(12)
    rand_b = secrets.randbits(62)
    return f"{ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b:032x}"


def id_time(request_id: str) -> float | None:
    """When a UUIDv7 id was made (Unix seconds), in its 32-digit or dashed 36-character form;
    None for any other id."""
    text = request_id
    if len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        text = text.replace("-", "")
    if not _HEX32.fullmatch(text) or text[12] != "7" or text[16] not in "89abAB":
        return None
    return int(text[:12], 16) / 1000
