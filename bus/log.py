"""Log output of the service and the command-line tools: JSON in production, console for people.

Every writebus logger writes to the standard ``logging`` module (:mod:`writebus.client.log`).
The service formats every record of the root logger with :class:`LineFormatter` and one of
structlog's renderers, so in JSON mode every line is one JSON object -- writebus' own events
with their fields as keys, and the messages of psycopg_pool, nats-py or anything else under
their logger's name.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from writebus.client.errors import ConfigError
from writebus.client.log import RECORD_ATTR

FORMATS = ("json", "console")

#: Libraries that log at INFO on every operation (psycopg_pool: each connection handed out and
#: returned). Their WARNING and above always show; their chatter only at DEBUG.
CHATTY = ("psycopg", "asyncio", "nats")


class LineFormatter(logging.Formatter):
    """Formats a record as one line with structlog's ``renderer`` (JSON or console).

    The line's fields are a writebus event's own (:data:`~writebus.client.log.RECORD_ATTR`) or,
    for any other library's record, its message as the ``event``; then the logger's name, the
    level, the record's time (ISO 8601, UTC) and the exception's text, if any.

    Built for the request log's rate: structlog's ``ProcessorFormatter`` copied every record
    and rebuilt its fields through a processor chain, about a quarter of a line's cost.
    """

    def __init__(self, renderer: Any) -> None:
        super().__init__()
        self._render = renderer

    def format(self, record: logging.LogRecord) -> str:
        """The record's line (without the newline)."""
        fields = getattr(record, RECORD_ATTR, None)
        ed: MutableMapping[str, Any] = (
            dict(fields) if isinstance(fields, dict) else {"event": record.getMessage()}
        )
        ed["logger"] = record.name
        method = record.levelname.lower()
        ed["level"] = method
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        ed["timestamp"] = stamp.isoformat().replace("+00:00", "Z")
        if record.exc_info:
            ed["exc_info"] = record.exc_info
            ed = structlog.processors.format_exc_info(None, method, ed)
        return self._render(None, method, ed)  # type: ignore[no-any-return]


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each line at once and flushes the stream once per event-loop step.

    Inside a running event loop the flush (a write to the pipe or file) waits for the end of
    the loop's current step, so the lines of a group's replies go out in one write instead of
    one each: a request log line into a pipe, 20 to a step, cost 48 µs against 71 flushing
    each. Outside a loop, or from another loop, a line is flushed as it is written. A process
    killed outright (SIGKILL) can lose the lines of the step it was in; an exit flushes them
    (``logging.shutdown``).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        #: The loop a flush is due on, if one is.
        self._due: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record``'s line; flush now or at the end of this loop step."""
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._due is not loop:
            self._due = loop
            loop.call_soon(self._flush_due)

    def _flush_due(self) -> None:
        self._due = None
        try:
            self.flush()
        except (OSError, ValueError):
            pass  # the stream closed (or its reader left) since: as logging.shutdown does


def log_level(name: str | None, variable: str = "WRITEBUS_LOG_LEVEL") -> int:
    """A level name (``debug``, ``info``, ...) as a number; ConfigError names the variable."""
    value = (name or "info").strip().upper()
    levels = logging.getLevelNamesMapping()
    if value not in levels:
        raise ConfigError(
            f"{variable}={name!r} is not a level: use debug, info, warning or error",
            variable=variable,
        )
    return levels[value]


def configure_logging(
    *, fmt: str | None = None, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Send every log record to ``stream`` (stderr) as JSON or console lines.

    ``fmt`` defaults to ``WRITEBUS_LOG_FORMAT``, else console on a terminal and JSON otherwise;
    ``level`` to ``WRITEBUS_LOG_LEVEL`` (default ``info``).

    For the whole process (this is the service's own set-up, not a library's): records do not
    look up their caller's file and line, thread or process -- no line shows them, and the
    lookup was a fifth of a request log line's cost (the ``logging`` HOWTO's "Optimization").
    """
    out = stream or sys.stderr
    fmt = (fmt or os.environ.get("WRITEBUS_LOG_FORMAT") or "").strip().lower() or (
        "console" if out.isatty() else "json"
    )
    if fmt not in FORMATS:
        raise ConfigError(
            f"WRITEBUS_LOG_FORMAT={fmt!r}: use json or console", variable="WRITEBUS_LOG_FORMAT"
        )
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    formatter = LineFormatter(renderer)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = LineHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    threshold = log_level(level or os.environ.get("WRITEBUS_LOG_LEVEL"))
    root.setLevel(threshold)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(threshold, logging.WARNING))
