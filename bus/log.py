"""Log output of the service and the command-line tools: JSON in production, console for people.

Every writebus logger writes to the standard ``logging`` module (:mod:`writebus.client.log`).
The service routes the root logger through structlog's ``ProcessorFormatter``, so in JSON mode
every line is one JSON object -- writebus' own events with their fields as keys, and the
messages of psycopg_pool, nats-py or anything else under their logger's name.
"""

from __future__ import annotations

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


def _restore_fields(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put a writebus event's own fields back (its message is their rendered form)."""
    record = event_dict.get("_record")
    fields = getattr(record, RECORD_ATTR, None)
    if isinstance(fields, dict):
        event_dict.update(fields)
    return event_dict


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
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            _restore_fields,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    threshold = log_level(level or os.environ.get("WRITEBUS_LOG_LEVEL"))
    root.setLevel(threshold)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(threshold, logging.WARNING))
