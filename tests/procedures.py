"""Procedures the test suite's bus nodes serve (``WRITEBUS_PROCEDURES=tests.procedures:procedures``)."""

from __future__ import annotations

from typing import Any

from client.procedures import Procedures

procedures = Procedures()


@procedures.register
async def add_note(conn: Any, table: str, body: str) -> int:
    """Insert a note into ``table`` and return its id."""
    cur = await conn.execute(f"INSERT INTO {table}(body) VALUES (%s) RETURNING id", [body])
    row = await cur.fetchone()
    return int(row[0])


@procedures.register
async def count_notes(conn: Any, table: str) -> int:
    """Count the rows of ``table`` (runs on whichever database serves the call)."""
    cur = await conn.execute(f"SELECT count(*) FROM {table}")
    row = await cur.fetchone()
    return int(row[0])


@procedures.register
async def whereami(conn: Any) -> dict[str, Any]:
    """Report whether the serving database is a standby."""
    cur = await conn.execute("SELECT pg_is_in_recovery()")
    row = await cur.fetchone()
    return {"in_recovery": bool(row[0])}


@procedures.register
async def boom(conn: Any) -> None:
    """Raise an ordinary Python error."""
    raise ValueError("boom from a procedure")


@procedures.register
async def sleep_then_add(conn: Any, table: str, body: str, seconds: float) -> int:
    """Insert a note after sleeping inside the transaction (for drain tests)."""
    await conn.execute("SELECT pg_sleep(%s)", [seconds])
    return await add_note(conn, table, body)
