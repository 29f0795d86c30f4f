"""Make psycopg meet a command's error while it is still sending a pipeline.

psycopg reads whatever results have arrived each time it queues a command, so an error the
server returned for an earlier command can surface from a later ``execute``. How often that
happens depends on timing; pausing before the send of a marked statement until the server has
sent an error for what came before makes it certain. (Postgres flushes an error at once; the
results of commands that succeed wait for the pipeline's sync, so a pause after those ends at
its timeout instead.)
"""

from __future__ import annotations

import asyncio
import select
import time
from typing import Any

import psycopg
import pytest

#: Put this comment in a statement's SQL to pause before psycopg queues it.
MARK = "/* pause before sending */"


async def _until_readable(sock: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not select.select([sock], [], [], 0)[0]:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


def pause_before_marked(monkeypatch: pytest.MonkeyPatch, timeout: float = 1.0) -> list[bool]:
    """Before each ``AsyncCursor.execute`` of SQL containing :data:`MARK`, wait until the
    server has sent something -- an error for what came before -- or ``timeout`` seconds.
    Returns one entry per pause: whether something had arrived (assert it where an error was
    expected, so the test proves what it claims)."""
    paused: list[bool] = []
    real = psycopg.AsyncCursor.execute

    async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(query, str) and MARK in query:
            paused.append(await _until_readable(self.connection.pgconn.socket, timeout))
        return await real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute)
    return paused
