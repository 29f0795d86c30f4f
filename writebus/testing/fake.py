"""FakeBus: the writebus API on one local Postgres, with no NATS, for fast unit tests.

A :class:`FakeBus` *is* a :class:`writebus.Database` configured as the primary region on that
database. Its writes therefore run through :func:`writebus.bus.execute.run_request`, the very
function bus workers run, with the same validation, exactly-once record, results and errors.
``rpc_region``/``rpc_primary`` go through the client's real request code to an in-process
stand-in for NATS (:class:`~writebus.testing.transport.LocalNats`) that hands them to a real
:class:`writebus.bus.handler.Handler` on the same database. :class:`SyncFakeBus` is a
:class:`writebus.SyncDatabase` around one.

What it does **not** simulate: the WAN (every call is local and fast), replication lag (reads
see every write at once, and ``wait_for_lsn`` returns at once), and NATS faults (no reconnects,
no lost or late replies). Results say ``via_bus=False`` and carry no forward or replication
timings. Those conditions are what :meth:`FakeBus.fail_next` is for: it makes the next writes
raise the errors they cause, with the right ``outcome``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from writebus.bus.execute import Limits
from writebus.bus.handler import Handler
from writebus.client.db import Database
from writebus.client.errors import WriteBusError
from writebus.client.pgpool import open_pool
from writebus.client.procedures import Procedures, load_procedures
from writebus.client.results import WriteResult
from writebus.client.retry import RetryPolicy
from writebus.client.rows import RowFactory
from writebus.client.settings import Settings
from writebus.client.sync import SyncDatabase
from writebus.client.writes import StatementLike, new_request_id
from writebus.testing.failures import (
    Failure,
    FakeFailure,
    OutcomeUnknown,
    Rejected,
    error_for,
    runs_first,
)
from writebus.testing.transport import DEFAULT_MAX_PAYLOAD, LocalNats, Responder

__all__ = ["FakeBus", "SyncFakeBus"]


async def _read_only(conn: psycopg.AsyncConnection[Any]) -> None:
    # A replica region's procedures run where writes fail, as on a hot standby (SQLSTATE 25006).
    await conn.execute("SET default_transaction_read_only = on")


class FakeBus(Database):
    """A :class:`~writebus.Database` on one local Postgres, no NATS (see the module docstring).

    ``database_url`` is the database (a primary, not a standby). ``procedures`` is a
    :class:`~writebus.Procedures` registry or its ``"module:attribute"`` name; it serves
    ``call``/``call_result`` and ``rpc_region``. The fake plays the primary region
    ``primary_region``; each of ``regions`` is a replica region whose ``rpc_region`` runs on the
    same database in read-only transactions. ``rpc_region`` to any other region raises
    :class:`~writebus.NoWorkerError`, as it does when no bus node serves a region. ``retry``,
    ``row_factory``, ``max_size`` and ``max_payload`` (the NATS limit every reply is held to)
    are as for :class:`~writebus.Database`.

    Use ``async with FakeBus(url) as db:``, or the ``writebus_fake`` pytest fixture.
    """

    def __init__(
        self,
        database_url: str,
        *,
        procedures: Procedures | str | None = None,
        primary_region: str = "local",
        regions: Iterable[str] = (),
        prefix: str = "writebus",
        retry: RetryPolicy | None = None,
        row_factory: RowFactory | None = None,
        max_size: int = 10,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        settings = Settings(
            region=primary_region,
            primary_region=primary_region,
            nats_urls=("local://writebus.testing",),
            database_url=database_url,
            primary_database_url=database_url,
            prefix=prefix,
        )
        if isinstance(procedures, str):
            procedures = load_procedures(procedures)
        self.transport = LocalNats(max_payload=max_payload)
        super().__init__(
            settings,
            procedures=procedures if procedures is not None else Procedures(),
            nats=self.transport,
            retry=retry,
            row_factory=row_factory,
            max_size=max_size,
        )
        self.replica_regions = tuple(r for r in regions if r != primary_region)
        self._failures: collections.deque[Failure] = collections.deque()
        self._request_ids: set[str] = set()
        self._replica_pool: AsyncConnectionPool[Any] | None = None

    def __repr__(self) -> str:
        return (
            f"<FakeBus primary={self.settings.primary_region!r} "
            f"replicas={list(self.replica_regions)} pending_failures={len(self._failures)}>"
        )

    # -- failure injection -----------------------------------------------------------------

    def fail_next(self, failure: Failure, *, times: int = 1) -> None:
        """Make the next ``times`` writes (``execute``, ``batch``, ``call``, ``call_result``)
        fail as ``failure`` says (:mod:`writebus.testing.failures`). Failures queue up in the
        order given; each write takes one. ``rpc_region``/``rpc_primary`` take none."""
        if not isinstance(failure, FakeFailure | OutcomeUnknown | Rejected):
            raise TypeError(f"not a FakeBus failure: {failure!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._failures.extend([failure] * times)

    @property
    def pending_failures(self) -> list[Failure]:
        """Failures queued by :meth:`fail_next` that no write has taken yet."""
        return list(self._failures)

    def clear_failures(self) -> None:
        """Forget the failures no write has taken yet."""
        self._failures.clear()

    async def forget_requests(self) -> int:
        """Delete the exactly-once records of the request ids this fake has written with (they
        live in the database's ``writebus`` schema, not the test's): a later test -- or run,
        on a lasting database -- may use the same fixed ids afresh. Returns how many records
        went. The fixtures call it after each test."""
        ids, self._request_ids = sorted(self._request_ids), set()
        if not ids:
            return 0
        url = self.settings.database_url or ""  # its own connection: the fake may be closed
        return await asyncio.to_thread(_forget, url, ids)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool (and create the exactly-once table), then serve each region's
        ``rpc`` subject with a bus :class:`~writebus.bus.handler.Handler`."""
        await super().open()
        try:
            await self._serve_regions()
        except BaseException:
            await self.close()
            raise

    async def _serve_regions(self) -> None:
        assert self.pool is not None and self.procedures is not None
        limits = Limits(max_reply_bytes=self.transport.max_payload)
        primary = self.settings.primary_region
        handler = Handler(
            pool=self.pool, procedures=self.procedures, region=primary, limits=limits
        )
        self._serve(primary, handler, primary=True)
        if not self.replica_regions:
            return
        self._replica_pool = await open_pool(
            self.settings.database_url,
            name="writebus-fake-replicas",
            min_size=1,
            max_size=4,
            timeout=self.settings.connect_timeout,
            configure=_read_only,
        )
        for region in self.replica_regions:
            handler = Handler(
                pool=self._replica_pool, procedures=self.procedures, region=region, limits=limits
            )
            self._serve(region, handler, primary=False)

    def _serve(self, region: str, handler: Handler, *, primary: bool) -> None:
        subject = self.subjects.rpc(region)

        async def respond(
            data: bytes, headers: dict[str, str] | None, received: float
        ) -> tuple[bytes, dict[str, str] | None]:
            return await handler.handle(
                data, headers, write=False, primary=primary, received=received, subject=subject
            )

        responder: Responder = respond
        self.transport.serve(subject, responder)

    async def close(self) -> None:
        """Let running procedure calls finish, then close the pools. Never raises."""
        await self.transport.close()
        await super().close()
        pool, self._replica_pool = self._replica_pool, None
        if pool is not None:
            await pool.close()

    # -- writes, with injected failures ----------------------------------------------------

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
        """:meth:`Database.batch`, unless :meth:`fail_next` queued a failure."""
        rid = request_id or new_request_id()
        self._request_ids.add(rid)
        run = functools.partial(
            super().batch,
            list(statements),
            await_replication=await_replication,
            rpc_timeout=rpc_timeout,
            replication_timeout=replication_timeout,
            request_id=rid,
            row_factory=row_factory,
        )
        return await self._inject(rid, run, rpc_timeout, replication_timeout, await_replication)

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
        """:meth:`Database.call_result`, unless :meth:`fail_next` queued a failure."""
        rid = request_id or new_request_id()
        self._request_ids.add(rid)
        run = functools.partial(
            super().call_result,
            procedure,
            *args,
            kwargs=kwargs,
            await_replication=await_replication,
            rpc_timeout=rpc_timeout,
            replication_timeout=replication_timeout,
            request_id=rid,
        )
        return await self._inject(rid, run, rpc_timeout, replication_timeout, await_replication)

    async def _inject(
        self,
        request_id: str,
        run: Callable[[], Awaitable[WriteResult]],
        rpc_timeout: float | None,
        replication_timeout: float | None,
        waits: bool,
    ) -> WriteResult:
        if not self._failures or (
            self._failures[0] is FakeFailure.REPLICATION_TIMEOUT and not waits
        ):  # a write that does not wait cannot time out waiting: the next one that does will
            return await run()
        failure = self._failures.popleft()
        lsn = None
        if runs_first(failure):
            try:
                lsn = (await run()).lsn
            except WriteBusError:
                if not isinstance(failure, OutcomeUnknown):
                    raise
                # The reply carrying this error is the one that was lost: the caller learns
                # nothing, and a resend with the same id gets the error then.
        s = self.settings
        raise error_for(
            failure,
            request_id=request_id,
            subject=self.subjects.write,
            primary_region=s.primary_region,
            region=s.region,
            rpc_timeout=rpc_timeout if rpc_timeout is not None else s.rpc_timeout,
            replication_timeout=(
                replication_timeout if replication_timeout is not None else s.replication_timeout
            ),
            lsn=lsn,
        )


class SyncFakeBus(SyncDatabase):
    """A :class:`~writebus.SyncDatabase` around a :class:`FakeBus` (the same options), for
    synchronous apps' tests. ``with SyncFakeBus(url) as db:``, or the ``writebus_sync_fake``
    fixture. Reads run in the calling thread; writes on the fake, on writebus' loop thread.
    """

    def __init__(self, database_url: str, **options: Any) -> None:
        self.fake = FakeBus(database_url, **options)
        super().__init__(database=self.fake, row_factory=self.fake.row_factory)

    def __repr__(self) -> str:
        return f"<SyncFakeBus around {self.fake!r}>"

    def fail_next(self, failure: Failure, *, times: int = 1) -> None:
        """Make the next ``times`` writes fail (:meth:`FakeBus.fail_next`)."""
        self.fake.fail_next(failure, times=times)

    @property
    def pending_failures(self) -> list[Failure]:
        """Failures no write has taken yet."""
        return self.fake.pending_failures

    def clear_failures(self) -> None:
        """Forget the failures no write has taken yet."""
        self.fake.clear_failures()

    def forget_requests(self) -> int:
        """Delete this fake's exactly-once records (:meth:`FakeBus.forget_requests`), open or
        closed."""
        fake = self.fake
        ids, fake._request_ids = sorted(fake._request_ids), set()
        return _forget(fake.settings.database_url or "", ids) if ids else 0


def _forget(url: str, ids: list[str]) -> int:
    """Delete the exactly-once records of ``ids`` (a connection of its own)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute("DELETE FROM writebus.applied WHERE id = ANY(%s)", [ids])
        return int(cur.rowcount)
