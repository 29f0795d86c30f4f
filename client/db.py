"""The client: a database handle that reads locally and writes through the bus.

Reads go to the local database (the region's replica). Writes run directly when this process is
in the primary region -- through the same function a bus worker runs them with
(:func:`writebus.bus.execute.run_request`) -- and elsewhere travel as NATS requests to the
primary region's bus workers; the call returns once the local replica has replayed the commit,
so the caller reads its own write.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Self

from psycopg_pool import AsyncConnectionPool

from writebus.client import writes
from writebus.client.connect import acquire_nats, release_nats
from writebus.client.dbreads import ReadAPI
from writebus.client.errors import (
    OutcomeUnknownError,
    ProtocolError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
    after_an_uncertain_try,
    committed_at,
    not_open,
)
from writebus.client.log import get_logger
from writebus.client.pgpool import open_pool
from writebus.client.pongs import guard_pongs
from writebus.client.procedures import Procedures, load_procedures
from writebus.client.protocol import Request
from writebus.client.reads import ReadGate
from writebus.client.reopen import Reopener
from writebus.client.results import WriteResult
from writebus.client.retry import RetryPolicy
from writebus.client.rows import RowFactory
from writebus.client.rpc import unrecorded_request
from writebus.client.settings import Settings
from writebus.client.subjects import Subjects
from writebus.client.tokens import Session
from writebus.client.tracker import LsnTracker
from writebus.client.trackers import acquire_tracker, release_tracker
from writebus.client.transport import NatsClient
from writebus.client.writes import (
    SQL,
    Params,
    StatementLike,
    new_request_id,
    to_statement,
    write_route,
)

log = get_logger("writebus.client.db")

#: How long a primary-region write tries its local primary before going over the bus (which
#: reaches whichever database is the primary now: after a failover, another region's).
DIRECT_PATIENCE = 1.0


class Database(ReadAPI):
    """A handle on the local database with writes routed to the primary.

    Use as ``async with Database(Settings.from_env()) as db:``. Keyword options:

    * ``procedures`` -- the :class:`~writebus.client.procedures.Procedures` registry run
      directly in the primary region (default: ``WRITEBUS_PROCEDURES``);
    * ``pool`` -- an open ``psycopg_pool.AsyncConnectionPool`` on the local database (not
      closed by :meth:`close`; in the primary region, ``configure=bus.pg.durable_commits``);
    * ``nats`` -- a connected NATS client to use instead of the process's shared connection
      (not closed by :meth:`close`);
    * ``row_factory`` -- psycopg's row factory for reads and write results alike (``dict_row``,
      ``class_row(Note)``...; tuples by default), overridable per call;
    * ``min_size``/``max_size`` of the local pool, ``retry`` (a ``RetryPolicy``).

    Wherever SQL is accepted, a SQLAlchemy Core construct is too (``insert(...)``,
    ``select(...)``, ``text(...)``; the ``sqlalchemy`` extra).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        procedures: Procedures | None = None,
        pool: AsyncConnectionPool[Any] | None = None,
        nats: NatsClient | None = None,
        min_size: int = 1,
        max_size: int = 10,
        retry: RetryPolicy | None = None,
        row_factory: RowFactory | None = None,
        local_pool: bool = True,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.row_factory = row_factory
        self._want_pool = local_pool
        self.procedures = procedures
        self.retry = retry or RetryPolicy()
        self.subjects = Subjects(self.settings.prefix)
        self._min_size = min_size
        self._max_size = max_size
        self._pool = pool
        self._owns_pool = pool is None
        self._nc = nats
        self._owns_nats = nats is None
        self._tracker: LsnTracker | None = None
        self._reopener = Reopener()
        self._gate = ReadGate(self.settings, self.retry)
        self._high = Session()  # this Database's newest write
        self._is_open = False

    def __repr__(self) -> str:
        s = self.settings
        return f"<Database region={s.region!r} primary={s.primary_region!r}>"

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the local pool, the NATS connection and (outside the primary) the tracker.

        Fails within ``settings.connect_timeout`` with
        :class:`~writebus.client.errors.ConnectError` naming the server and the reason. If any
        step fails (or is cancelled) what was already opened is closed again. Opening an
        open Database does nothing."""
        if self._is_open:
            return
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        self._is_open = True

    async def _open(self) -> None:
        s = self.settings
        if self._pool is None and s.database_url and self._want_pool:
            self._pool = await open_pool(
                s.database_url,
                name=f"writebus-local-{s.region}",
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=s.connect_timeout,
                configure=writes.local_pool_configure(s),
            )
        if self._nc is None:
            self._nc = await acquire_nats(s, name=f"writebus-{s.region}")
        else:
            guard_pongs(self._nc)  # the app's own connection: see writebus.client.pongs
        if s.is_primary and self._pool is not None:
            if self.procedures is None and s.procedures:
                self.procedures = load_procedures(s.procedures)
            await writes.ensure_exactly_once_table(self._pool)
        if not s.is_primary:
            self._tracker = await acquire_tracker(s, self._nc)

    async def close(self) -> None:
        """Close everything this handle opened. Never raises."""
        self._is_open = False
        await self._reopener.stop()
        tracker, self._tracker = self._tracker, None
        nc, owned = self._nc, self._owns_nats  # both let go before any wait: see reopen
        if owned:
            self._nc = None
        if tracker is not None:
            await release_tracker(tracker)
        if nc is not None and owned:
            await release_nats(nc)
        await self._gate.close()
        pool = self._pool
        if pool is not None and self._owns_pool:
            self._pool = None
            await pool.close()

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
    def nats(self) -> NatsClient | None:
        """The NATS connection in use."""
        return self._nc

    @property
    def pool(self) -> AsyncConnectionPool[Any] | None:
        """The local database's connection pool."""
        return self._pool

    # -- writes ---------------------------------------------------------------------------

    async def execute(
        self,
        sql: SQL,
        params: Params = None,
        *,
        await_replication: bool = True,
        rpc_timeout: float | None = None,
        replication_timeout: float | None = None,
        request_id: str | None = None,
        row_factory: RowFactory | None = None,
    ) -> WriteResult:
        """Run one write statement on the primary; see :meth:`batch` for the options."""
        return await self.batch(
            [(sql, params)], await_replication=await_replication, rpc_timeout=rpc_timeout,
            replication_timeout=replication_timeout, request_id=request_id, row_factory=row_factory,
        )  # fmt: skip

    async def batch(
        self,
        statements: Iterable[StatementLike],
        *,
        await_replication: bool = True,
        rpc_timeout: float | None = None,
        replication_timeout: float | None = None,
        request_id: str | None = None,
        row_factory: RowFactory | None = None,
    ) -> WriteResult:
        """Run statements atomically, in order, in one transaction on the primary.

        In the primary region they run directly on the local database; elsewhere they go over
        the bus and, unless ``await_replication`` is false, the call returns once the local
        replica has replayed the commit. Either way the same rules, limits and errors apply and
        the request id is recorded so it is applied once. ``rpc_timeout`` bounds the whole
        write, retries included (same id, so nothing applies twice); ``replication_timeout``
        bounds the wait for replay. ``request_id`` lets a caller resend a write whose outcome
        was unknown (:class:`~writebus.client.errors.OutcomeUnknownError`) to learn it.
        ``row_factory`` shapes ``RETURNING`` rows (default: the Database's).
        """
        stmts = [to_statement(s) for s in statements]
        if not stmts:
            raise ProtocolError("batch() needs at least one statement")
        req = Request(
            id=request_id or new_request_id(), statements=stmts, origin=self.settings.region
        )
        return await self._write(
            req, await_replication, rpc_timeout, replication_timeout, row_factory,
            made_id=request_id is None,
        )  # fmt: skip

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
        req = Request(
            id=request_id or new_request_id(),
            procedure=procedure,
            args=list(args),
            kwargs=kwargs or {},
            origin=self.settings.region,
        )
        return await self._write(
            req, await_replication, rpc_timeout, replication_timeout, made_id=request_id is None
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
        Does not wait for replication, and is not recorded for exactly-once: it is resent only
        when it provably never ran, and an unknown outcome is an
        :class:`~writebus.client.errors.UnrecordedOutcomeError` (calling again runs it again)."""
        req = Request(
            id=new_request_id(),
            procedure=procedure,
            args=list(args),
            kwargs=kwargs or {},
            origin=self.settings.region,
        )
        nc, left = await self._nats(timeout if timeout is not None else self.settings.rpc_timeout)
        if nc is None:
            raise not_open("the Database", write=True)
        ex = await unrecorded_request(nc, self.subjects, region, req, timeout=left, retry=self.retry)
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

    # -- internals ------------------------------------------------------------------------

    async def _nats(self, timeout: float) -> tuple[NatsClient | None, float]:
        """The connection for a bus write or read, and what is left of the call's ``timeout``:
        one of ours nats-py closed for good is reopened first (:mod:`writebus.client.reopen`)."""
        asked = time.monotonic()
        if self._nc is not None and self._nc.is_closed and self._owns_nats:
            await self._reopener.reopen(self, timeout)
        return self._nc, max(0.001, timeout - (time.monotonic() - asked))

    async def _write(
        self, req: Request, await_replication: bool, rpc_timeout: float | None,
        replication_timeout: float | None, row_factory: RowFactory | None = None, *,
        made_id: bool = False,
    ) -> WriteResult:  # fmt: skip
        if self._nc is None:
            raise not_open("the Database", write=True)
        timeout = rpc_timeout if rpc_timeout is not None else self.settings.rpc_timeout
        factory = row_factory or self.row_factory
        try:
            result = await self._route_write(
                req, await_replication, timeout, replication_timeout, factory, made_id
            )
        except WriteBusError as err:
            self.saw(*committed_at(err))  # committed, not seen replayed: reads must wait for it
            raise
        self.saw(result.lsn, result.timeline)
        return result

    async def _route_write(
        self,
        req: Request,
        await_replication: bool,
        timeout: float,
        replication_timeout: float | None,
        factory: RowFactory | None,
        made_id: bool,
    ) -> WriteResult:
        assert self._nc is not None
        if write_route(self.settings, has_local_pool=self._pool is not None) == "direct":
            assert self._pool is not None
            started = time.monotonic()
            try:
                return await writes.direct(
                    req,
                    pool=self._pool,
                    procedures=self.procedures,
                    settings=self.settings,
                    retry=self.retry,
                    max_reply_bytes=self._nc.max_payload,
                    timeout=min(timeout, DIRECT_PATIENCE),
                    row_factory=factory,
                    made_id=made_id,
                    deadline=started + timeout,
                )
            except (UnavailableError, OutcomeUnknownError, WriteRejectedError) as exc:
                if not writes.primary_lost(exc):
                    raise
                # The local primary is down or was demoted (a failover), or it holds another
                # try of this id: the bus, the primary's now, keeps trying. Exactly once by id.
                log.log(*writes.fallback_event(exc), request_id=req.id, error=str(exc))
                timeout = max(0.1, timeout - (time.monotonic() - started))
                if isinstance(exc, OutcomeUnknownError):
                    return await self._after_ambiguity(
                        exc, req, await_replication, timeout, replication_timeout, factory
                    )
        return await self._via_bus(req, await_replication, timeout, replication_timeout, factory)

    async def _via_bus(
        self,
        req: Request,
        await_replication: bool,
        timeout: float,
        replication_timeout: float | None,
        factory: RowFactory | None,
    ) -> WriteResult:
        nc, left = await self._nats(timeout)  # a reopen takes its part of the time
        if nc is None:  # closed while a direct try ran: it stands
            raise not_open("the Database", write=True, reason="closed during the call")
        return await writes.via_bus(
            req, nc=nc, settings=self.settings, retry=self.retry, tracker=self._tracker,
            await_replication=await_replication, row_factory=factory, timeout=left,
            replication_timeout=replication_timeout,
        )  # fmt: skip

    async def _after_ambiguity(
        self,
        first: OutcomeUnknownError,
        req: Request,
        await_replication: bool,
        timeout: float,
        replication_timeout: float | None,
        factory: RowFactory | None,
    ) -> WriteResult:
        """The bus, after a direct attempt that may have committed: an answer that says "not
        applied" describes only the bus attempt, so it becomes outcome-unknown too."""
        try:
            return await self._via_bus(
                req, await_replication, timeout, replication_timeout, factory
            )
        except WriteBusError as err:
            answer = after_an_uncertain_try(
                err, req.id, f"the direct attempt may have committed ({first.reason})"
            )
            if answer is err:
                raise
            raise answer from err


async def connect(settings: Settings | None = None, **options: Any) -> Database:
    """Open a :class:`Database` (``settings`` default to :meth:`Settings.from_env`)."""
    db = Database(settings, **options)
    await db.open()
    return db
