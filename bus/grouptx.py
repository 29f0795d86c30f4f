"""What a group's transaction shares between its two ways of running (:mod:`.group`,
:mod:`.optimistic`): the outcome types, and the steps that end the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from writebus.bus import idempotency
from writebus.bus.pg import FLUSH_LSN_SQL, rejected
from writebus.client.errors import WriteBusError
from writebus.client.lsn import parse_lsn
from writebus.client.protocol import Request, StatementResult


@dataclass
class Executed:
    """What a request produced: its results (or a procedure's value), the primary's flush LSN
    read after COMMIT (None when not run on the primary), and whether the id had already been
    applied (then this is the stored result; nothing was run again)."""

    results: list[StatementResult]
    value: Any = None
    lsn: int | None = None
    duplicate: bool = False


Outcome = Executed | WriteBusError


class Lost(Exception):
    """The connection went away; ``committing`` says whether COMMIT may have reached it."""

    def __init__(self, cause: BaseException, committing: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.committing = committing


class GroupCommitFailed(Exception):
    """COMMIT of a group of several failed: run each request alone to learn its outcome."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


def rejection(error: psycopg.Error, index: int | None = None) -> WriteBusError:
    """``rejected(error)`` with psycopg's exception as its cause (as when raised from it)."""
    err = rejected(error, statement_index=index)
    err.__cause__ = error
    return err


async def commit(
    conn: psycopg.AsyncConnection[Any],
    applied: list[tuple[Request, bytes, list[StatementResult]]],
    read_lsn: bool,
) -> int | None:
    """Record the applied ids with their digests and results, COMMIT, read the flush LSN:
    one round trip. Returns the LSN (None when not asked for)."""
    rows = [(req.id, digest, idempotency.encode_result(results, None))
            for req, digest, results in applied]  # fmt: skip
    flush = None
    async with conn.pipeline() as pipe:
        await conn.execute(idempotency.STORE_SQL, idempotency.store_params(rows))
        await conn.execute("COMMIT")
        if read_lsn:
            flush = await conn.execute(FLUSH_LSN_SQL)
        await pipe.sync()
    if flush is None:
        return None
    row = await flush.fetchone()
    assert row is not None
    return parse_lsn(row[0])


async def flush_lsn(conn: psycopg.AsyncConnection[Any]) -> int:
    """The primary's flush position."""
    cur = await conn.execute(FLUSH_LSN_SQL)
    row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])


async def rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    """ROLLBACK, when a transaction is open."""
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        await conn.execute("ROLLBACK")
