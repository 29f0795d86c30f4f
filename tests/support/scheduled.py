"""Recording what an event loop is asked to run: for tests of how wake-ups are scheduled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest


def record_call_soon(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every callback ``loop.call_soon`` schedules from now on (until ``monkeypatch``
    is undone); each is still scheduled."""
    scheduled: list[Any] = []
    plain = loop.call_soon

    def call_soon(callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        scheduled.append(callback)
        return plain(callback, *args, context=context)

    monkeypatch.setattr(loop, "call_soon", call_soon)
    return scheduled
