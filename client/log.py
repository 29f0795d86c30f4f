"""How writebus logs: structlog's API on top of the standard ``logging`` module.

A library must stay quiet unless the application says otherwise. Every writebus logger is a
structlog ``BoundLogger`` wrapped around a standard logger named after its module
(``writebus.client.tracker``, ``writebus.bus.worker``...), with a private processor chain: the
global structlog configuration is never read or changed, and output goes wherever the
application's ``logging`` configuration sends it -- nowhere, by default (the ``writebus`` logger
has a ``NullHandler``, so not even Python's last-resort handler prints).

Each record's message is ``event key=value ...``, readable under a plain ``basicConfig``; the
structured fields travel in the record's ``writebus`` attribute, which the service's formatter
(:mod:`writebus.bus.log`) turns back into JSON keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

#: Attribute of a ``logging.LogRecord`` holding the event's structured fields.
RECORD_ATTR: Final = "writebus"

logging.getLogger("writebus").addHandler(logging.NullHandler())


#: A value holding any of these is quoted in the message (one search: a per-character scan of
#: each field cost a sixth of the service's request log line).
_QUOTE: Final = re.compile(r'[ ="\n]')


def _value(value: Any) -> str:
    text = str(value)
    if text == "" or _QUOTE.search(text):
        return repr(text)
    return text


class Message:
    """A record's message, ``event key=value ...``: made when a handler first asks for it.

    The service's formatter reads the fields and never asks, and the message cost a sixth of a
    request log line. Under a plain ``logging`` set-up it reads as before (``str(record.msg)``,
    ``record.getMessage()``).
    """

    __slots__ = ("fields", "_text")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            items = iter(self.fields.items())
            _, event = next(items)  # the event comes first
            self._text = " ".join([str(event), *(f"{k}={_value(v)}" for k, v in items)])
        return self._text

    def __repr__(self) -> str:
        return repr(str(self))


def _to_stdlib(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    exc_info = event_dict.pop("exc_info", None)
    fields = {"event": str(event_dict.pop("event", "")), **event_dict}
    kwargs: dict[str, Any] = {"extra": {RECORD_ATTR: fields}}
    if exc_info:
        kwargs["exc_info"] = exc_info
    return (Message(fields),), kwargs


def get_logger(name: str) -> Any:
    """A structlog logger writing to the standard logger ``name`` (a ``writebus.*`` name)."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, _to_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )
