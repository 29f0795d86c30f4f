"""The client: a database handle that reads locally and writes through the bus.

Reads go to the local database (the region's replica). Writes run directly when this process is
in the primary region; elsewhere they travel as NATS requests to the primary region's bus
workers, and the call returns once the local replica has replayed the commit -- so the caller
reads its own write.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Self

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from writebus.client.connect import connect_nats
from writebus.client.errors import (
    CommitUnknownError,
    ProtocolError,
    TrackerError,
    UnavailableError,
    WriteBusError,
)
from writebus.client.execute import connection_lost, rejected, run_procedure, run_statements
from writebus.client.procedures import Procedures
from writebus.client.protocol import Request, Statement
from writebus.client.results import StatementOutcome, Timings, WriteResult
from writebus.client.retry import RetryPolicy, for_procedure_calls
from writebus.client.rpc import Exchange, request
from writebus.client.settings import Settings
from writebus.client.subjects import Subjects
from writebus.client.tracker import LsnTracker, acquire_tracker, release_tracker

log = structlog.get_logger("writebus.client")

Params = Sequence[Any] | dict[str, Any] | None
StatementLike = Statement | str | tuple[str, Params]


def _statement(s: StatementLike) -> Statement:
    if isinstance(s, Statement):
        return s
    if isinstance(s, str):
        return Statement(sql=s)
    sql, params = s
    return Statement(sql=sql, params=_params(params))


def _params(params: Params) -> list[Any] | dict[str, Any] | None:
    if params is None or isinstance(params, dict):
        return params
    return list(params)


def new_request_id() -> str:
    """A fresh request id (random, 32 hex characters)."""
    return uuid.uuid4().hex


class Database:
    """A handle on the local database with writes routed to the primary.

    Use as ``async with Database(Settings.from_env()) as db:``. Keyword options:
    ``procedures`` (a :class:`~writebus.client.procedures.Procedures` registry, used to run procedures
    directly in the primary region), ``min_size``/``max_size`` of the local connection pool, and
    ``retry`` (a :class:`~writebus.client.retry.RetryPolicy`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        procedures: Procedures | None = None,
        min_size: int = 1,
        max_size: int = 10,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.procedures = procedures
        self.retry = retry or RetryPolicy()
        self.subjects = Subjects(self.settings.prefix)
        self._min_size = min_size
        self._max_size = max_size
        self._pool: AsyncConnectionPool | None = None
        self._nc: Any = None
        self._tracker: LsnTracker | None = None

    def __repr__(self) -> str:
        s = self.settings
        return f"<Database region={s.region!r} primary={s.primary_region!r}>"

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the local pool, the NATS connection and (outside the primary) the tracker.

        If any step fails (or is cancelled) what was already opened is closed again."""
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        s = self.settings
        if s.database_url:
            self._pool = AsyncConnectionPool(
                s.database_url,
                min_size=self._min_size,
                max_size=self._max_size,
                kwargs={"autocommit": True},
                open=False,
                name=f"writebus-local-{s.region}",
            )
            await self._pool.open(wait=True, timeout=10)
        self._nc = await connect_nats(s, name=f"writebus-client-{s.region}")
        if not s.is_primary:
            self._tracker = await acquire_tracker(s)

    async def close(self) -> None:
        """Close everything this handle opened."""
        if self._tracker is not None:
            await release_tracker(self._tracker)
            self._tracker = None
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def tracker(self) -> LsnTracker | None:
        """The process's LSN tracker for this region (None in the primary region)."""
        return self._tracker

    @property
    def nats(self) -> Any:
        """The underlying nats-py connection."""
        return self._nc

    # -- reads: always the local database -------------------------------------------------

    def _local(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise WriteBusError("no local database: set DATABASE_URL and open the Database")
        return self._pool

    async def _read(self, sql: str, params: Params, one: bool) -> Any:
        # A pooled connection can have been cut while idle (the replica restarted): psycopg
        # reports that on first use. Try once more on a fresh connection; the pool discards
        # the broken one.
        for attempt in (1, 2):
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                async with self._local().connection() as conn:
                    cur = await conn.execute(sql, params)
                    return await (cur.fetchone() if one else cur.fetchall())
            except PoolTimeout:
                raise
            except psycopg.OperationalError:
                if attempt == 2 or conn is None or not (conn.broken or conn.closed):
                    raise
        raise AssertionError("unreachable")

    async def fetch(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        """All rows of a query on the local database."""
        return await self._read(sql, params, one=False)  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, params: Params = None) -> tuple[Any, ...] | None:
        """The first row of a query on the local database, or None."""
        return await self._read(sql, params, one=True)  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, params: Params = None) -> Any:
        """The first column of the first row, or None."""
        row = await self.fetchrow(sql, params)
        return row[0] if row else None

    # -- writes ---------------------------------------------------------------------------

    async def execute(
        self,
        sql: str,
        params: Params = None,
        *,
        await_replication: bool = True,
        rpc_timeout: float | None = None,
        replication_timeout: float | None = None,
    ) -> WriteResult:
        """Run one write statement on the primary; see :meth:`batch` for the options."""
        return await self.batch(
            [Statement(sql=sql, params=_params(params))],
            await_replication=await_replication,
            rpc_timeout=rpc_timeout,
            replication_timeout=replication_timeout,
        )

    async def batch(
        self,
        statements: Iterable[StatementLike],
        *,
        await_replication: bool = True,
        rpc_timeout: float | None = None,
        replication_timeout: float | None = None,
        request_id: str | None = None,
    ) -> WriteResult:
        """Run statements atomically, in order, in one transaction on the primary.

        In the primary region they run directly on the local database. Elsewhere they go over
        the bus and, unless ``await_replication`` is false, the call returns once the local
        replica has replayed the commit. ``rpc_timeout`` bounds getting the reply (retries
        included, with the same request id so nothing applies twice); ``replication_timeout``
        bounds the wait for replay. On error nothing was applied: :class:`WriteRejectedError`
        carries the SQLSTATE. In the primary region a write that lost its connection before
        COMMIT is run again (it was not applied) within ``rpc_timeout``; one that lost it
        during COMMIT raises :class:`CommitUnknownError` (the outcome is unknown).
        """
        stmts = [_statement(s) for s in statements]
        if not stmts:
            raise ProtocolError("batch() needs at least one statement")
        if self.settings.is_primary and self._pool is not None:
            return await self._direct(stmts=stmts, timeout=rpc_timeout)
        req = Request(
            id=request_id or new_request_id(), statements=stmts, origin=self.settings.region
        )
        return await self._via_bus(
            self.subjects.write, req, await_replication, rpc_timeout, replication_timeout
        )

    async def call(
        self,
        procedure: str,
        *args: Any,
        kwargs: dict[str, Any] | None = None,
        await_replication: bool = True,
        rpc_timeout: float | None = None,
        replication_timeout: float | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Run a registered procedure on the primary and wait for local replay
        (fly_postgres' ``rpc_and_wait``). Returns the procedure's value."""
        result = await self.call_result(
            procedure,
            *args,
            kwargs=kwargs,
            await_replication=await_replication,
            rpc_timeout=rpc_timeout,
            replication_timeout=replication_timeout,
            request_id=request_id,
        )
        return result.value

    async def call_result(
        self,
        procedure: str,
        *args: Any,
        kwargs: dict[str, Any] | None = None,
        await_replication: bool = True,
        rpc_timeout: float | None = None,
        replication_timeout: float | None = None,
        request_id: str | None = None,
    ) -> WriteResult:
        """Like :meth:`call` but returns the whole :class:`WriteResult` (LSN, timings)."""
        kw = kwargs or {}
        local = self.procedures is not None and procedure in self.procedures
        if self.settings.is_primary and self._pool is not None and local:
            return await self._direct(
                procedure=procedure, args=args, kwargs=kw, timeout=rpc_timeout
            )
        req = Request(
            id=request_id or new_request_id(),
            procedure=procedure,
            args=list(args),
            kwargs=kw,
            origin=self.settings.region,
        )
        return await self._via_bus(
            self.subjects.write, req, await_replication, rpc_timeout, replication_timeout
        )

    async def rpc_region(
        self,
        region: str,
        procedure: str,
        *args: Any,
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run a registered procedure in ``region`` and return its value (fly_rpc's
        ``rpc_region``). It runs on that region's database: writes only succeed on the primary.
        Does not wait for replication."""
        req = Request(
            id=new_request_id(),
            procedure=procedure,
            args=list(args),
            kwargs=kwargs or {},
            origin=self.settings.region,
        )
        total = timeout if timeout is not None else self.settings.rpc_timeout
        ex = await self._request(
            self.subjects.rpc(region), req, total, region, for_procedure_calls(self.retry, total)
        )
        return ex.reply.value

    async def rpc_primary(
        self,
        procedure: str,
        *args: Any,
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run a registered procedure in the primary region (fly_rpc's ``rpc_primary``)."""
        return await self.rpc_region(
            self.settings.primary_region, procedure, *args, kwargs=kwargs, timeout=timeout
        )

    async def wait_for_lsn(self, lsn: int, timeout: float | None = None) -> int:
        """Wait until the local replica has replayed ``lsn``; return the replayed position."""
        if self._tracker is None:
            return lsn  # the primary region reads the primary: nothing to wait for
        return await self._tracker.wait_for(
            lsn, timeout if timeout is not None else self.settings.replication_timeout
        )

    # -- internals ------------------------------------------------------------------------

    async def _request(
        self,
        subject: str,
        req: Request,
        timeout: float | None,
        region: str,
        policy: RetryPolicy | None = None,
    ) -> Exchange:
        if self._nc is None:
            raise WriteBusError("the Database is not open")
        return await request(
            self._nc,
            subject,
            req,
            timeout=timeout if timeout is not None else self.settings.rpc_timeout,
            policy=policy or self.retry,
            region=region,
        )

    async def _via_bus(
        self,
        subject: str,
        req: Request,
        await_replication: bool,
        rpc_timeout: float | None,
        replication_timeout: float | None,
    ) -> WriteResult:
        start = time.monotonic()
        ex = await self._request(subject, req, rpc_timeout, self.settings.primary_region)
        reply = ex.reply
        lsn = reply.lsn_int
        replication_ms: float | None = None
        # In the primary region reads go to the primary itself: nothing to wait for.
        if await_replication and lsn is not None and not self.settings.is_primary:
            if self._tracker is None:
                raise TrackerError("no LSN tracker: is this Database open?")
            t0 = time.monotonic()
            await self.wait_for_lsn(lsn, replication_timeout)
            replication_ms = (time.monotonic() - t0) * 1000
        server_ms = reply.server_ms or 0.0
        return WriteResult(
            statements=[StatementOutcome.from_wire(r) for r in reply.results],
            lsn=lsn,
            region=reply.region or self.settings.primary_region,
            via_bus=True,
            value=reply.value,
            duplicate=reply.duplicate,
            replicated=replication_ms is not None,
            timings=Timings(
                forward_ms=max(0.0, ex.rpc_ms - server_ms),
                commit_ms=server_ms,
                replication_ms=replication_ms,
                total_ms=(time.monotonic() - start) * 1000,
                attempts=ex.attempts,
            ),
        )

    async def _direct(
        self,
        *,
        stmts: list[Statement] | None = None,
        procedure: str | None = None,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        start = time.monotonic()
        deadline = start + (timeout if timeout is not None else self.settings.rpc_timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                value, outcomes = await self._direct_once(
                    stmts, procedure, args, kwargs, deadline - time.monotonic()
                )
                break
            except _NotApplied as exc:
                err = exc.error
            # The connection was lost before COMMIT (e.g. the primary restarted and the pool
            # handed out a dead connection): nothing was applied, so running it again is safe.
            now = time.monotonic()
            delay = self.retry.should_retry(
                err, attempt=attempt, elapsed=now - start, remaining=deadline - now
            )
            if delay is None:
                raise err
            await asyncio.sleep(delay)
        elapsed = (time.monotonic() - start) * 1000
        return WriteResult(
            statements=outcomes,
            lsn=None,
            region=self.settings.region,
            via_bus=False,
            value=value,
            timings=Timings(
                forward_ms=0.0,
                commit_ms=elapsed,
                replication_ms=None,
                total_ms=elapsed,
                attempts=attempt,
            ),
        )

    async def _direct_once(
        self,
        stmts: list[Statement] | None,
        procedure: str | None,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        budget: float,
    ) -> tuple[Any, list[StatementOutcome]]:
        value: Any = None
        outcomes: list[StatementOutcome] = []
        committing = False
        try:
            async with self._local().connection(timeout=max(0.1, budget)) as conn:
                try:
                    async with conn.transaction():
                        if stmts is not None:
                            wire = await run_statements(conn, stmts)
                            outcomes = [StatementOutcome.from_wire(r) for r in wire]
                        else:
                            assert self.procedures is not None and procedure is not None
                            proc = self.procedures.get(procedure)
                            value = await run_procedure(
                                conn, proc, args, kwargs or {}, name=procedure
                            )
                        committing = True
                except psycopg.Error as exc:
                    if not connection_lost(conn, exc):
                        # Refused at COMMIT (a deferred constraint, a serialization failure).
                        raise rejected(exc) from exc
                    if committing:
                        raise CommitUnknownError(
                            "the connection to the primary was lost during COMMIT: "
                            f"the write may or may not have committed ({exc})"
                        ) from exc
                    raise _NotApplied(f"primary database connection lost: {exc}", exc) from exc
        except PoolTimeout as exc:
            raise _NotApplied(f"primary database unavailable: {exc}", exc) from exc
        return value, outcomes


class _NotApplied(Exception):
    """A direct write failed before COMMIT: ``error`` is what to raise if it is not retried."""

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.error = UnavailableError(message)
        self.error.__cause__ = cause


async def connect(settings: Settings | None = None, **options: Any) -> Database:
    """Open a :class:`Database` (``settings`` default to :meth:`Settings.from_env`)."""
    db = Database(settings, **options)
    await db.open()
    return db


