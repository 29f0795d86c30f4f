"""Publishes the NATS server refused: permission violations, remembered per connection.

A server that refuses a publish (the user's role may not publish there) drops the message
and tells the client with an asynchronous ``-ERR``, which nats-py hands to the error
callback only: a request on that subject then just hears nothing, and would end "outcome
unknown" although it never reached a worker. :func:`refused` records each refusal;
:func:`refused_since` lets a request that got no reply tell the two apart.
"""

from __future__ import annotations

import re
import time
import weakref
from typing import Any

_PUBLISH = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)
_by_connection: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()


def refused(nc: Any, error: BaseException, now: float | None = None) -> str | None:
    """Record ``error``, reported on ``nc``, when it is a refused publish; returns the
    subject, else None."""
    match = _PUBLISH.search(str(error))
    if match is None:
        return None
    subject = match.group(1)
    _by_connection.setdefault(nc, {})[subject] = time.monotonic() if now is None else now
    return subject


def refused_since(nc: Any, subject: str, since: float) -> bool:
    """Whether the server refused a publish to ``subject`` on ``nc`` at or after ``since``
    (monotonic seconds)."""
    at = _by_connection.get(nc, {}).get(subject)
    return at is not None and at >= since
