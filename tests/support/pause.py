"""Make psycopg meet a command's error while it is still sending a pipeline.

psycopg reads whatever results have arrived each time it queues a command, so an error the
server returned for an earlier command can surface from a later ``execute``. How often that
happens depends on timing; pausing before the send of a marked statement makes it certain:
by then the server has run what came before, and sent its error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

#: Put this comment in a statement's SQL to pause before psycopg queues it.
MARK = "/* pause before sending */"


def pause_before_marked(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.05) -> list[str]:
    """Pause ``seconds`` before each ``AsyncCursor.execute`` of SQL containing :data:`MARK`;
    returns the list of statements paused at (to assert the pause happened)."""
    paused: list[str] = []
    real = psycopg.AsyncCursor.execute

    async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(query, str) and MARK in query:
            paused.append(query)
            await asyncio.sleep(seconds)
        return await real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute)
    return paused
