"""structlog configuration: JSON in production, readable console output in development."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(*, fmt: str | None = None, level: str | None = None) -> None:
    """Configure structlog (``WRITEBUS_LOG_FORMAT``, ``WRITEBUS_LOG_LEVEL``)."""
    fmt = fmt or os.environ.get("WRITEBUS_LOG_FORMAT") or (
        "console" if sys.stderr.isatty() else "json"
    )
    level_name = (level or os.environ.get("WRITEBUS_LOG_LEVEL") or "info").upper()
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
