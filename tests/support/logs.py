"""Finding writebus' log records in pytest's ``caplog``."""

from __future__ import annotations

import logging

import pytest


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The captured records of writebus ``event`` (the ``writebus`` fields a record carries)."""
    return [r for r in caplog.records if getattr(r, "writebus", {}).get("event") == event]
