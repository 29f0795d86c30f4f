"""Exactly-once writes: applied request ids recorded on the primary, in the write's transaction.

A worker *claims* the request id first thing in the transaction. If another transaction holds
the same id -- a retry racing its original -- Postgres makes the claim wait for it: when the
original commits the claim finds a conflict and the worker answers with the stored result
instead of applying the write again; when the original rolled back the claim succeeds.
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg

from writebus.client.protocol import StatementResult

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS writebus;
CREATE TABLE IF NOT EXISTS writebus.applied (
    id          text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    result      bytea
);
CREATE INDEX IF NOT EXISTS applied_applied_at_idx ON writebus.applied (applied_at);
"""

CLAIM_SQL = "INSERT INTO writebus.applied (id) VALUES (%s) ON CONFLICT (id) DO NOTHING"
STORE_SQL = "UPDATE writebus.applied SET result = %s WHERE id = %s"
_FETCH = "SELECT result FROM writebus.applied WHERE id = %s"
_EXPIRE = "DELETE FROM writebus.applied WHERE applied_at < now() - make_interval(secs => %s)"
_LOCK_KEY = 0x77726974  # advisory lock serialising schema creation across workers


class StoredResult(msgspec.Struct, kw_only=True):
    """What a repeated request id is answered with."""

    results: list[StatementResult] = []
    value: Any = None


_encoder = msgspec.msgpack.Encoder(enc_hook=str)
_decoder = msgspec.msgpack.Decoder(StoredResult)


async def ensure_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the ``writebus.applied`` table if missing (safe with concurrent workers)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        await conn.execute(SCHEMA_SQL)


async def claim(conn: psycopg.AsyncConnection[Any], request_id: str) -> bool:
    """Claim ``request_id`` inside the caller's transaction; False if it was already applied."""
    cur = await conn.execute(CLAIM_SQL, [request_id])
    return cur.rowcount == 1


async def store(
    conn: psycopg.AsyncConnection[Any],
    request_id: str,
    results: list[StatementResult],
    value: Any,
) -> None:
    """Record the result of ``request_id`` inside the caller's transaction."""
    blob = encode_result(results, value)
    await conn.execute(STORE_SQL, [blob, request_id])


def encode_result(results: list[StatementResult], value: Any) -> bytes:
    """The stored form of a request's result (for :data:`STORE_SQL`)."""
    return _encoder.encode(StoredResult(results=results, value=value))


async def fetch(conn: psycopg.AsyncConnection[Any], request_id: str) -> StoredResult | None:
    """The stored result of an applied request id, or None if it expired meanwhile."""
    cur = await conn.execute(_FETCH, [request_id])
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    return _decoder.decode(row[0])


async def expire(conn: psycopg.AsyncConnection[Any], older_than: float) -> int:
    """Forget request ids applied more than ``older_than`` seconds ago; returns how many."""
    cur = await conn.execute(_EXPIRE, [older_than])
    return cur.rowcount
