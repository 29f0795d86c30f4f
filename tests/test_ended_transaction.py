"""A statement or a procedure that ends its own request's transaction, on the real primary.

Validation refuses ``COMMIT``, ``ROLLBACK`` and the like (``tests/unit/test_protocol.py``);
these cases call the executor past it, as a way around validation would. What ran before the
statement may have committed without its exactly-once record, and what ran after it ran
outside any transaction: every request of that transaction is answered outcome-unknown, and
nothing of it runs again.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.support.stack import primary_rows
from writebus.bus.execute import Job, Limits, run_request, run_statement_writes
from writebus.client.db import Database
from writebus.client.errors import (
    Outcome,
    OutcomeUnknownError,
    TransactionEndedError,
    WriteBusError,
)
from writebus.client.procedures import Procedures
from writebus.client.protocol import Request, Statement

procedures = Procedures()


@procedures.register
async def commits_itself(conn: Any, table: str, body: str) -> str:
    """Insert, then end the transaction it was given."""
    await conn.execute(f"INSERT INTO {table}(body) VALUES (%s)", [body])
    await conn.execute("COMMIT")
    return body


@procedures.register
async def commits_then_raises(conn: Any, table: str, body: str) -> None:
    """Insert, commit, then fail: the failure is not the whole story."""
    await conn.execute(f"INSERT INTO {table}(body) VALUES (%s)", [body])
    await conn.execute("COMMIT")
    raise ValueError("after its own COMMIT")


@pytest.fixture
def pool(worker_pool: AsyncConnectionPool[Any]) -> AsyncConnectionPool[Any]:
    """The worker-like pool on the primary (``worker_pool``)."""
    return worker_pool


def _job(*sqls: str) -> Job:
    return Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=s) for s in sqls]))


def _count(stack: Any, table: str, body: str) -> int:
    return int(primary_rows(stack, f"SELECT count(*) FROM {table} WHERE body = %s", [body])[0][0])


async def test_a_statement_ending_the_transaction_makes_every_outcome_unknown(
    stack: Any, pool: Any, table: str
) -> None:
    """In a group (its first try sends the statements without savepoints) and alone (the
    careful way), before or after the request's own statement: unknown, never "not applied",
    and never run again -- each row is there once."""
    insert = f"INSERT INTO {table}(body) VALUES ('{{}}')"
    limits = Limits(max_reply_bytes=64 * 1024)
    grouped = await run_statement_writes(
        pool, [_job(insert.format("group")), _job(";COMMIT")], limits=limits
    )
    alone = [
        (await run_statement_writes(pool, [job], limits=limits))[0]
        for job in (
            _job(insert.format("before"), ";COMMIT"),
            _job("/* /* */ */ ROLLBACK", insert.format("after")),
        )
    ]
    for out in grouped + alone:
        assert isinstance(out, OutcomeUnknownError), repr(out)
        assert "ended the transaction" in str(out)
    for body in ("group", "before", "after"):
        assert _count(stack, table, body) == 1


@pytest.mark.parametrize("name", ["commits_itself", "commits_then_raises"])
async def test_a_procedure_ending_its_transaction_makes_the_outcome_unknown(
    stack: Any, pool: Any, table: str, name: str
) -> None:
    """A procedure that sends COMMIT itself committed its work without the exactly-once
    record: unknown, whether it then returned or raised."""
    body = f"proc-{name}"
    req = Request(id=uuid.uuid4().hex, procedure=name, args=[table, body])
    with pytest.raises(WriteBusError) as caught:
        await run_request(pool, req, procedures=procedures, limits=Limits())
    assert caught.value.outcome is Outcome.UNKNOWN, repr(caught.value)
    assert _count(stack, table, body) == 1


@pytest.mark.parametrize("region", ["lax", "syd"])
async def test_a_write_that_ended_its_transaction_is_not_sent_again(
    lax_db: Database, syd_db: Database, stack: Any, table: str, region: str
) -> None:
    """Through a Database, over the bus (lax) and directly (syd): the answer is
    TransactionEndedError -- unknown, and not retryable -- so neither the client's retry loop
    nor the primary region's fallback to the bus runs the write again (no record was kept to
    stop a resend). The procedure's row is there once."""
    db = lax_db if region == "lax" else syd_db
    marker = uuid.uuid4().int % 2**31
    with pytest.raises(TransactionEndedError) as info:
        await db.call("ends_its_transaction", table, marker)
    assert info.value.outcome is Outcome.UNKNOWN and not info.value.retryable
    rows = primary_rows(stack, f"SELECT count(*) FROM {table} WHERE n = %s", [marker])
    assert rows == [(1,)]
