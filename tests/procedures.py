"""Procedures the test suite's bus nodes serve (``WRITEBUS_PROCEDURES=tests.procedures:procedures``)."""

from __future__ import annotations

from typing import Any

from writebus.client.procedures import Procedures

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


@procedures.register
async def swallow_error(conn: Any, table: str) -> str:
    """Catch a database error and return normally (leaves the transaction aborted)."""
    try:
        await conn.execute(f"INSERT INTO {table}(body, n) VALUES ('bad', -1)")
    except Exception:
        return "swallowed"
    return "no error"


@procedures.register
async def violate_at_commit(conn: Any, table: str) -> str:
    """Break a deferred constraint: the error comes at COMMIT, after the procedure returned."""
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS parent_{table} (id int PRIMARY KEY) ON COMMIT DROP"
    )
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS child_{table} (pid int REFERENCES parent_{table} "
        "DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP"
    )
    await conn.execute(f"INSERT INTO child_{table} VALUES (42)")
    return "returned"


@procedures.register
async def ends_its_transaction(conn: Any, table: str, marker: int) -> None:
    """Insert a row marked ``marker``, then send COMMIT itself (which a procedure must not)."""
    await conn.execute(
        f"INSERT INTO {table}(body, n) VALUES (gen_random_uuid()::text, %s)", [marker]
    )
    await conn.execute("COMMIT")


@procedures.register
async def describe(conn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """What a procedure receives: each argument's type name, and the arguments themselves."""
    return {
        "types": [type(a).__name__ for a in args],
        "kwtypes": {k: type(v).__name__ for k, v in kwargs.items()},
        "args": list(args),
        "kwargs": kwargs,
    }


@procedures.register
async def weakens_commit(conn: Any, table: str, body: str, scope: str, value: str = "off") -> str:
    """Insert a note with synchronous_commit set to ``value`` for the transaction (``scope``
    "local") or the session; ``off`` a procedure must not leave (the bus restores a flushed
    COMMIT)."""
    await conn.execute(f"SET {'LOCAL ' if scope == 'local' else ''}synchronous_commit = {value}")
    await conn.execute(f"INSERT INTO {table}(body) VALUES (%s)", [body])
    cur = await conn.execute("SELECT current_setting('synchronous_commit')")
    row = await cur.fetchone()
    return str(row[0])


@procedures.register
async def blob(conn: Any, table: str, size: int) -> bytes:
    """Insert a note, and return ``size`` bytes."""
    await conn.execute(f"INSERT INTO {table}(body) VALUES ('blob')")
    return b"x" * size
