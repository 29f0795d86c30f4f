"""Request ids: random, and dated, so the primary finds their exactly-once record quickly.

A request id is any string of 1 to 128 characters. The ones writebus makes (:func:`new_id`) are
UUIDv7 (RFC 9562) in the canonical 36-character form: 48 bits of Unix milliseconds, the
version, then 74 random bits. A worker that reads a date from an id (:func:`id_time`) looks
its record up only in the exactly-once table's partitions from about then on, instead of in
every partition of the retention window (:mod:`writebus.bus.idempotency`); any other id is
looked up everywhere, as before.

Only the dashed form is read: 32 bare hex digits are what many applications make from random
bytes or digests (``token_hex(16)``, ``uuid4().hex``, an MD5), and one in 64 of those looks like
a UUIDv7 by its version and variant digits. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
import uuid
from typing import Final

_DASHED: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def new_id(now: float | None = None) -> str:
    """A fresh UUIDv7, dated ``now`` (Unix seconds; default: the current time)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFF_FFFF_FFFF
    value = ms << 80 | 0x7 << 76 | secrets.randbits(12) << 64 | 0b10 << 62 | secrets.randbits(62)
    return str(uuid.UUID(int=value))


def id_time(request_id: str) -> float | None:
    """When a UUIDv7 in the canonical lowercase dashed form was made (Unix seconds); None for
    any other id.

    Memoised (the last 4,096 ids): a worker reads each write's date three times on its way --
    whether it may join a group, where its claim looks, where its record goes -- and the
    pattern match is most of a microsecond each time."""
    return _id_time(request_id)


@functools.lru_cache(maxsize=4096)
def _id_time(request_id: str) -> float | None:
    if len(request_id) != 36 or not _DASHED.fullmatch(request_id):
        return None
    return int(request_id[:8] + request_id[9:13], 16) / 1000
