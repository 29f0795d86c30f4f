"""SQLAlchemy ORM changes written as one atomic bus batch (the ``sqlalchemy`` extra).

Read with the ORM from the local replica; write the session's pending inserts, updates and
deletes through the bus, in one transaction on the primary::

    plan = orm_batch(session)                  # pure: the statements, or OrmRefusedError
    result = await db.batch(plan.statements)   # one transaction, all or nothing
    plan.apply(session, result)                # keys and defaults set; objects clean

or in one call, ``await write_session(db, session)`` (``write_session_sync(sdb, session)`` with
a :class:`~writebus.client.sync.SyncDatabase`). The session itself never flushes these objects:
:meth:`OrmPlan.apply` makes them persistent and clean as if they had been loaded, so the
session only reads. Its own transaction -- on the replica -- is not involved: a later
``session.rollback()`` or ``commit()`` only expires them, and they load again from the replica,
which by then has replayed the write.

An UPDATE (or a versioned DELETE) must match exactly one row -- with the version counter of a
mapper that has one -- or the whole batch rolls back and :class:`StaleObjectError` names the
object. What one list of statements cannot do correctly is refused before anything is sent
(:class:`OrmRefusedError`, :class:`Refusal`); docs/sqlalchemy.md explains each case.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ModuleNotFoundError as exc:  # the base install
    raise ModuleNotFoundError(
        "writebus.client.orm needs SQLAlchemy: pip install 'writebus[sqlalchemy]'", name=exc.name
    ) from exc

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import tuple_row
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import InstanceState, Session, make_transient, make_transient_to_detached
from sqlalchemy.orm.exc import StaleDataError

from writebus.client import orm_values
from writebus.client.errors import (
    LostInFailoverError,
    Outcome,
    TrackerError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.orm_plan import plan_session
from writebus.client.orm_steps import (
    GUARD_MARK,
    Column,
    OrmRefusedError,
    Refusal,
    Step,
    describe,
    is_sql,
    mapped_columns,
)
from writebus.client.results import StatementOutcome, WriteResult
from writebus.client.writes import no_position, replay_wait_failed

if TYPE_CHECKING:
    from writebus.client.db import Database
    from writebus.client.sync import SyncDatabase

__all__ = [
    "OrmPlan",
    "OrmRefusedError",
    "Refusal",
    "StaleObjectError",
    "orm_batch",
    "write_session",
    "write_session_sync",
]

#: SQLSTATE of the guard's failing cast (invalid_text_representation).
_GUARD_SQLSTATE = "22P02"


class StaleObjectError(WriteRejectedError, StaleDataError):
    """An UPDATE or DELETE of the batch matched no row: ``obj`` was changed (its version
    counter moved) or deleted since it was loaded. The whole batch was rolled back.

    Also a ``sqlalchemy.orm.exc.StaleDataError``, as the ORM's own flush would raise;
    ``__cause__`` is the database's rejection."""

    def __init__(self, obj: object | None, what: str, cause: WriteRejectedError) -> None:
        who = describe(obj) if obj is not None else "a row"
        super().__init__(
            f"{who} was changed or deleted since it was loaded ({what} matched no row); "
            "the whole batch was rolled back",
            sqlstate=cause.sqlstate,
            statement_index=cause.statement_index,
            detail=cause.detail,
        )
        self.obj = obj


@dataclass(frozen=True)
class OrmPlan:
    """What :func:`orm_batch` planned: the statements to send, and how to settle the session
    once they committed."""

    steps: tuple[Step, ...]
    #: Every object the batch settles: written, or holding relationship changes it carries.
    settles: tuple[InstanceState[Any], ...]
    #: The objects themselves: the session holds some only weakly, and they must live until
    #: apply() has settled them.
    held: tuple[object, ...] = ()

    @property
    def statements(self) -> list[Any]:
        """The SQLAlchemy Core statements, in order, for :meth:`Database.batch`."""
        return [step.statement for step in self.steps]

    def stale_error(self, exc: BaseException) -> StaleObjectError | None:
        """The :class:`StaleObjectError` that ``exc`` (from sending these statements) stands
        for, or None when it is another failure."""
        if not isinstance(exc, WriteRejectedError) or exc.statement_index is None:
            return None
        if not 0 <= exc.statement_index < len(self.steps):
            return None
        step = self.steps[exc.statement_index]
        if step.guard is None or exc.sqlstate != _GUARD_SQLSTATE or GUARD_MARK not in str(exc):
            return None
        return StaleObjectError(step.row.state.obj() if step.row else None, step.guard, exc)

    def apply(self, session: Session, result: WriteResult | None) -> None:
        """Settle ``session`` after the batch committed: returned keys and server defaults are
        set on the objects; written objects become persistent and clean, deleted ones leave the
        session. Values that cannot be read back faithfully are left expired, to load from the
        replica on access. ``result`` is the batch's (None for a plan with no statements)."""
        outcomes = result.statements if result is not None else []
        if len(outcomes) != len(self.steps):
            raise ValueError(
                f"a result of {len(outcomes)} statements for a plan of {len(self.steps)}"
            )
        fills: dict[InstanceState[Any], dict[str, Any]] = {st: {} for st in self.settles}
        drops: dict[InstanceState[Any], set[str]] = {st: set() for st in self.settles}
        deleted: list[InstanceState[Any]] = []
        for step, outcome in zip(self.steps, outcomes, strict=True):
            row = step.row
            if row is None:
                continue
            if row.op == "delete":
                deleted.append(row.state)
                continue
            fill, drop = fills[row.state], drops[row.state]
            key = dict(mapped_columns(row.state.mapper))  # unmapped columns set nothing
            for col, value in row.where.items():
                if col.primary_key:  # the identity, even if the attribute was expired
                    fill[key[col]] = value
            for col, value in row.values.items():
                if col not in key:
                    continue
                if is_sql(value):
                    drop.add(key[col])
                else:
                    fill[key[col]] = value
            drop.update(key[col] for col in row.expire)
            for col, raw in zip(step.returning, _cells(outcome, step.returning), strict=True):
                fill[key[col]] = orm_values.load(col.type, raw)
                drop.discard(key[col])
        # Strong references: out of the session, an object nobody else holds would be gone.
        objs = [st.obj() for st in self.settles]
        if any(obj is None for obj in objs):
            raise ValueError("an object of this plan is gone: apply() a plan it was made from")
        # All leave the session before any returns: adding one cascades to its relationships,
        # which must find the others detached (re-attached as they are), not pending.
        for obj in objs:
            make_transient(obj)
        for st, obj in zip(self.settles, objs, strict=True):
            st.dict.update(fills[st])
            for name in drops[st] - fills[st].keys():
                st.dict.pop(name, None)
            make_transient_to_detached(obj)  # history committed; missing keys expired
        for obj in objs:
            session.add(obj)
        for st in deleted:  # after the adds, whose cascades must not re-attach them
            session.expunge(st.obj())
        for step in self.steps:
            if step.detached is not None:
                _expire_detached(session, *step.detached)


def _cells(outcome: StatementOutcome, returning: tuple[Column, ...]) -> list[Any]:
    """The values of a statement's one ``RETURNING`` row, in ``returning`` order."""
    if not returning:
        return []
    if len(outcome.rows) != 1:
        raise ValueError(f"expected one returned row, got {len(outcome.rows)}")
    row = outcome.rows[0]
    if isinstance(row, Mapping):
        return [row[col.name] for col in returning]
    if isinstance(row, Sequence) and len(row) == len(returning):
        return list(row)
    raise ValueError("apply() reads tuple or dict rows: send the batch with row_factory=tuple_row")


def _expire_detached(session: Session, mapper: Any, key: dict[Column, Any]) -> None:
    """Objects in the session that referenced a deleted row had their key set to NULL by one
    set-based UPDATE: expire that key (and the relationships over it) to load again."""
    names = {mapper.get_property_by_column(col).key for col in key}
    names |= {rel.key for rel in mapper.relationships if set(rel.local_columns) & key.keys()}
    for obj in list(session.identity_map.values()):
        state: InstanceState[Any] = sa_inspect(obj)
        if state.mapper.isa(mapper) and all(
            state.dict.get(mapper.get_property_by_column(c).key) == v for c, v in key.items()
        ):
            session.expire(obj, list(names))


def orm_batch(session: Session) -> OrmPlan:
    """Plan ``session``'s pending inserts, updates and deletes as one batch.

    Pure: reads ``session.new``, ``session.dirty``, ``session.deleted`` and attribute
    histories; sends and changes nothing. Raises :class:`OrmRefusedError` (naming the object
    and the :class:`Refusal`) for what one list of statements cannot write correctly."""
    steps, settles = plan_session(session)
    held = [st.obj() for st in settles] + [step.row.state.obj() for step in steps if step.row]
    return OrmPlan(tuple(steps), tuple(settles), tuple(held))


async def write_session(
    db: Database,
    session: Session,
    *,
    await_replication: bool = True,
    rpc_timeout: float | None = None,
    replication_timeout: float | None = None,
    request_id: str | None = None,
) -> WriteResult | None:
    """Write ``session``'s pending changes in one batch and settle the session.

    Returns the batch's :class:`WriteResult` (None when there was nothing to write). Once the
    commit is known the call waits for the local replica to replay it (unless
    ``await_replication`` is false), then settles the objects; when only the wait fails -- a
    :class:`~writebus.client.errors.ReplicationTimeoutError`, the tracker gone -- the session
    is settled all the same, and the error says the write was applied. A failover that lost
    the commit raises :class:`~writebus.client.errors.OutcomeUnknownError` and leaves the
    session as it was: write it again with ``request_id=err.request_id``. The batch is planned
    again then: a Python-side default that differs at each call (a ``uuid4`` key, ``now()``)
    makes it another request, which a batch that did commit after all refuses
    (:class:`~writebus.client.errors.IdempotencyKeyReusedError`, nothing applied) -- read the
    rows back to learn what became of it. Raises
    :class:`OrmRefusedError` before sending, :class:`StaleObjectError` when a row changed
    meanwhile, and any error of :meth:`Database.batch`. Nothing else may change the session's
    objects while this waits: settling commits what they hold."""
    plan = orm_batch(session)
    if not plan.steps:
        plan.apply(session, None)
        return None
    with _stale_errors(plan):
        result = await db.batch(plan.statements, **_batch_options(rpc_timeout, request_id))
    if not _to_wait_for(plan, session, result, await_replication):
        return result
    with _settling(plan, session, result):
        await db.wait_for_lsn(result.lsn or 0, replication_timeout, result.timeline)
    return dataclasses.replace(result, replicated=True)


def write_session_sync(
    sdb: SyncDatabase,
    session: Session,
    *,
    await_replication: bool = True,
    rpc_timeout: float | None = None,
    replication_timeout: float | None = None,
    request_id: str | None = None,
) -> WriteResult | None:
    """:func:`write_session` for a :class:`~writebus.client.sync.SyncDatabase` (the same
    steps; the batch and the wait run on its background loop, as all its writes do)."""
    plan = orm_batch(session)
    if not plan.steps:
        plan.apply(session, None)
        return None
    with _stale_errors(plan):
        result = sdb.batch(plan.statements, **_batch_options(rpc_timeout, request_id))
    if not _to_wait_for(plan, session, result, await_replication):
        return result
    with _settling(plan, session, result):
        sdb.wait_for_lsn(result.lsn or 0, replication_timeout, result.timeline)
    return dataclasses.replace(result, replicated=True)


def _to_wait_for(
    plan: OrmPlan, session: Session, result: WriteResult, await_replication: bool
) -> bool:
    """Whether the batch's replay is to be waited for; if not, the session is settled now. A
    reply that says it committed without a position cannot be waited for: settled, and the
    applied error :meth:`Database.batch` raises (it was sent not to wait)."""
    if await_replication and result.via_bus and result.lsn is None:
        plan.apply(session, result)
        raise no_position(result.request_id or "", "the bus")
    if not (await_replication and result.via_bus):
        plan.apply(session, result)
        return False
    return True


@contextmanager
def _settling(plan: OrmPlan, session: Session, result: WriteResult) -> Iterator[None]:
    """Around the replay wait after ``result`` committed: settle ``session`` from it after
    the wait, or when only the wait failed (the error then says applied, at the commit's
    position, as any write's does: :func:`~writebus.client.writes.replay_wait_failed`). A
    failover that lost the commit leaves the session unsettled, to be written again under the
    same request id."""
    assert result.lsn is not None
    rid = result.request_id or ""
    try:
        yield
    except LostInFailoverError as exc:
        raise replay_wait_failed(exc, rid, result.lsn) from exc
    except BaseException as exc:
        if isinstance(exc, TrackerError):
            replay_wait_failed(exc, rid, result.lsn, timeline=result.timeline)  # applied
        elif isinstance(exc, WriteBusError) and exc.outcome is None:
            exc.outcome = Outcome.APPLIED  # the wait could not run (closed): it committed
        plan.apply(session, result)
        raise
    plan.apply(session, result)


def _batch_options(rpc_timeout: float | None, request_id: str | None) -> dict[str, Any]:
    # The replay wait is the caller's (_settling). Tuple rows, whatever the Database's row
    # factory, for apply().
    return {
        "await_replication": False,
        "rpc_timeout": rpc_timeout,
        "request_id": request_id,
        "row_factory": tuple_row,
    }


@contextmanager
def _stale_errors(plan: OrmPlan) -> Iterator[None]:
    """Raise a failed guard as the :class:`StaleObjectError` it stands for."""
    try:
        yield
    except WriteRejectedError as exc:
        stale = plan.stale_error(exc)
        if stale is None:
            raise
        raise stale from exc
