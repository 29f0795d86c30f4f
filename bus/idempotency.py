"""Exactly-once writes: applied request ids recorded on the primary, in the write's transaction.

A worker *claims* the request id first thing in the transaction. If another transaction holds
the same id -- a retry racing its original -- Postgres makes the claim wait for it: when the
original commits the claim finds a conflict and the worker answers with the stored result
instead of applying the write again; when the original rolled back the claim succeeds.

The claim stores a digest of what the request asks for (statements and parameters, or procedure
and arguments). A repeat whose digest differs is not a retry but a different request under a
used id: it is refused with :class:`IdempotencyKeyReusedError` (as payment APIs refuse a reused
idempotency key) instead of being answered, silently, with the first request's result.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import psycopg

from writebus.client.errors import IdempotencyKeyReusedError
from writebus.client.protocol import Request, StatementResult

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS writebus;
CREATE TABLE IF NOT EXISTS writebus.applied (
    id          text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    result      bytea
);
ALTER TABLE writebus.applied ADD COLUMN IF NOT EXISTS digest bytea;
CREATE INDEX IF NOT EXISTS applied_applied_at_idx ON writebus.applied (applied_at);
"""

CLAIM_SQL = (
    "INSERT INTO writebus.applied (id, digest) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING"
)
STORE_SQL = "UPDATE writebus.applied SET result = %s WHERE id = %s"
_FETCH = "SELECT result, digest FROM writebus.applied WHERE id = %s"
_EXPIRE = "DELETE FROM writebus.applied WHERE applied_at < now() - make_interval(secs => %s)"
_LOCK_KEY = 0x77726974  # advisory lock serialising schema creation across workers


class StoredResult(msgspec.Struct, kw_only=True):
    """What a repeated request id is answered with."""

    results: list[StatementResult] = []
    value: Any = None


_encoder = msgspec.msgpack.Encoder(enc_hook=str)
_decoder = msgspec.msgpack.Decoder(StoredResult)


def request_digest(req: Request) -> bytes:
    """16 bytes identifying what ``req`` asks for: its statements and parameters, or its
    procedure and arguments -- not its id, version, origin or per-attempt timeout, which a
    retry may change."""
    body = [
        [[s.sql, s.params] for s in req.statements] if req.statements is not None else None,
        req.procedure,
        req.args,
        req.kwargs,
    ]
    return hashlib.blake2b(_encoder.encode(body), digest_size=16).digest()


def check_digest(request_id: str, stored: bytes | None, digest: bytes) -> None:
    """Raise :class:`IdempotencyKeyReusedError` when a repeat of ``request_id`` asks for
    something else than the request first applied under it (rows from before digests were
    stored, ``stored`` None, are taken as matching)."""
    if stored is not None and bytes(stored) != digest:
        raise IdempotencyKeyReusedError(
            f"request id {request_id!r} was already used for a different request; nothing was "
            "applied. Use a new id for a new request; resend the identical request to learn "
            "the first one's outcome"
        )


async def ensure_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the ``writebus.applied`` table if missing (safe with concurrent workers)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        await conn.execute(SCHEMA_SQL)


async def claim(conn: psycopg.AsyncConnection[Any], request_id: str, digest: bytes) -> bool:
    """Claim ``request_id`` inside the caller's transaction; False if it was already applied."""
    cur = await conn.execute(CLAIM_SQL, [request_id, digest])
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


async def fetch(
    conn: psycopg.AsyncConnection[Any], request_id: str, digest: bytes
) -> StoredResult | None:
    """The stored result of an applied request id, or None if it expired meanwhile. Raises
    :class:`IdempotencyKeyReusedError` when the id was applied for a different request."""
    cur = await conn.execute(_FETCH, [request_id])
    row = await cur.fetchone()
    if row is None:
        return None
    check_digest(request_id, row[1], digest)
    if row[0] is None:
        return None
    return _decoder.decode(row[0])


async def expire(conn: psycopg.AsyncConnection[Any], older_than: float) -> int:
    """Forget request ids applied more than ``older_than`` seconds ago; returns how many."""
    cur = await conn.execute(_EXPIRE, [older_than])
    return cur.rowcount
