"""A request refused before its claim, whose id was applied before.

A rule, a limit or an unknown procedure refuses a request before it claims its id -- "not
applied". For a *resend* of an id applied earlier (its first reply lost, say) that answer
would be untrue whenever the refusal is new: the operator turned off raw SQL in between
(``WRITEBUS_ALLOW_SQL=false``), a deploy renamed the procedure, a limit was lowered. So on
the exactly-once path a refusal first looks the id up, as a claim does (waiting for a try
still running), and a recorded id is answered from its record.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool

from writebus.bus import idempotency
from writebus.bus.group import Executed
from writebus.bus.grouptx import Lost, applied_position
from writebus.bus.proctx import find, read_committed
from writebus.client.errors import Outcome, OutcomeUnknownError, WriteBusError
from writebus.client.log import get_logger
from writebus.client.protocol import Request

log = get_logger("writebus.bus.execute")


async def unless_applied(
    refusal: WriteBusError,
    pool: psycopg_pool.AsyncConnectionPool[Any],
    req: Request,
    *,
    acquire_timeout: float,
) -> Executed:
    """The stored answer when ``req.id`` was applied before; else raise ``refusal``. When the
    lookup cannot say (no connection in time, the connection lost), an earlier try may have
    applied it: :class:`OutcomeUnknownError` (a resend looks again), not the refusal."""
    if refusal.outcome is not Outcome.NOT_APPLIED:
        raise refusal
    stored = None
    try:
        async with pool.connection(timeout=acquire_timeout) as conn:
            async with read_committed(conn, True), conn.transaction(force_rollback=True):
                stored = await find(conn, req, idempotency.request_digest(req), unseen=False)
            if stored is None:
                raise refusal
            lsn = await applied_position(conn)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        log.warning("execute.refused_lookup_failed", request_id=req.id, error=str(exc))
        known = stored is not None  # read before the failure: applied
        why = "applied before" if known else "whether it was applied before is not known"
        raise OutcomeUnknownError(req.id, f"refused ({refusal}), but {why}: the lookup failed "
                                  f"({exc})") from exc  # fmt: skip
    except Lost as lost:  # recorded, so applied; its position unreadable: not "not applied"
        raise OutcomeUnknownError(req.id, lost.uncertainty) from lost.cause
    log.info("execute.refused_but_applied", request_id=req.id, refusal=str(refusal))
    return Executed(stored.results, stored.value, lsn, True)
