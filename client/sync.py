"""The synchronous API: the same methods, options, results and errors as :class:`Database`.

For Django, Flask, scripts and Celery workers. Reads run on a synchronous psycopg pool in the
calling thread. Writes, procedure calls and replay waits run on the async
:class:`~writebus.client.db.Database` on a background event-loop thread
(:mod:`writebus.client.loopthread`): one implementation of the write path, the retries and the
tracker, so the two APIs cannot disagree. Why this over a generated sync twin is in
docs/design.md (thread safety, fork safety, shutdown, latency).

A :class:`SyncDatabase` may be shared by any number of threads. After ``os.fork()`` the child
notices (the process id changed) and reconnects on its next call -- once, however many of its
threads call -- leaving the parent's sockets alone; one given a pool or a Database cannot, and
says so.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from typing import Any, Self

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from writebus.client.db import Database
from writebus.client.errors import Outcome, StaleReadError, WriteBusError, not_open
from writebus.client.loopthread import LoopThread, _inherited, reopen_lock, shared_loop
from writebus.client.pgpool import connect_error
from writebus.client.procedures import Procedures
from writebus.client.reads import Consistency, Fallback
from writebus.client.results import WriteResult
from writebus.client.retry import RetryPolicy
from writebus.client.rows import RowFactory
from writebus.client.settings import Settings
from writebus.client.tokens import current_session
from writebus.client.tracker import LsnTracker
from writebus.client.writes import SQL, Params, StatementLike, to_sql


def open_sync_pool(
    conninfo: str, *, name: str, min_size: int, max_size: int, timeout: float
) -> ConnectionPool[Any]:
    """A synchronous autocommit pool; ConnectError with the server's reason within
    ``timeout`` (as :func:`writebus.client.pgpool.open_pool` for the async one)."""
    try:
        psycopg.connect(conninfo, connect_timeout=max(1, math.ceil(timeout))).close()
    except psycopg.Error as exc:
        raise connect_error(conninfo, exc)  # noqa: B904 -- its cause is chosen by connect_error
    pool: ConnectionPool[Any] = ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        open=False,
        name=name,
    )
    try:
        pool.open(wait=True, timeout=timeout)
    except Exception as exc:
        pool.close()
        raise connect_error(conninfo, exc, f"pool did not fill: {exc}")  # noqa: B904
    return pool


#: ``SyncDatabase._owner`` after a forked child's reopen failed: not this process's, so the
#: next call tries again.
_REOPEN = -1


class SyncDatabase:
    """A synchronous handle on the local database with writes routed to the primary.

    ``with SyncDatabase(Settings.from_env()) as db:`` -- the keyword options are those of
    :class:`Database` (``procedures``, ``min_size``, ``max_size``, ``retry``, ``row_factory``);
    ``pool`` is a synchronous ``psycopg_pool.ConnectionPool`` for reads. A NATS connection
    cannot be handed in: the background loop owns its own.

    ``database`` -- an async :class:`Database`, not yet open, to run writes on instead of one
    built from the settings and options (a test double such as
    :class:`writebus.testing.FakeBus`). It is opened on the background loop and closed with this
    handle; ``settings`` default to its own.

    After ``fork`` the child's first call opens the child's own connections and loop, once
    however many threads call. A given ``pool`` or ``database`` holds the parent's
    connections and cannot be reopened: the child's calls then raise "not open" (a write:
    not applied). Make them in the child instead (gunicorn's ``post_fork``).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        procedures: Procedures | None = None,
        pool: ConnectionPool[Any] | None = None,
        min_size: int = 1,
        max_size: int = 10,
        retry: RetryPolicy | None = None,
        row_factory: RowFactory | None = None,
        database: Database | None = None,
    ) -> None:
        if settings is None and database is not None:
            settings = database.settings
        self.settings = settings or Settings.from_env()
        self.procedures = procedures
        self.retry = retry
        self.row_factory = row_factory
        self._min_size = min_size
        self._max_size = max_size
        self._pool = pool
        self._owns_pool = pool is None
        self._adb: Database | None = None
        self._primary_reads: ConnectionPool[Any] | None = None
        self._given = database
        self._loop: LoopThread | None = None
        self._owner = 0  # the process whose connections these are (set as open() starts)
        self._open_in = 0  # the process it is open in (set once open() is done)
        self._fork_error: str | None = None
        self._rlock = threading.RLock()
        self._rlock_pid = os.getpid()

    def __repr__(self) -> str:
        s = self.settings
        return f"<SyncDatabase region={s.region!r} primary={s.primary_region!r}>"

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Open the local read pool and, on the background loop, the async Database (NATS,
        the tracker; in the primary region the pool its direct writes use). Opening a handle
        open in this process does nothing (a second Database was opened, never closed)."""
        if self._open_in == os.getpid():
            return
        self._owner = os.getpid()
        try:
            s = self.settings
            if self._pool is None and s.database_url:
                self._pool = open_sync_pool(
                    s.database_url,
                    name=f"writebus-sync-{s.region}",
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=s.connect_timeout,
                )
            self._loop = shared_loop()
            self._adb = self._given if self._given is not None else Database(
                s,
                procedures=self.procedures,
                retry=self.retry,
                row_factory=self.row_factory,
                min_size=1,
                max_size=self._max_size,
                # Reads use the sync pool; the async one is only for direct writes.
                local_pool=s.is_primary,
            )
            self._loop.run(self._adb.open())
            self._open_in = os.getpid()  # last: until then, a child's other threads wait
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close everything this handle opened. Never raises."""
        with self._lock():  # taken from the handle, closed outside: no I/O under the lock
            self._open_in = 0
            if self._forked():
                self._abandon()
                return
            loop, adb, self._adb = self._loop, self._adb, None
            pool = None
            if self._owns_pool:
                pool, self._pool = self._pool, None
            primary, self._primary_reads = self._primary_reads, None
        if adb is not None and loop is not None:
            try:
                loop.run(adb.close())
            except Exception:  # closing must not raise; the loop may be shutting down
                pass
        for sync_pool in (pool, primary):
            if sync_pool is not None:
                sync_pool.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forked(self) -> bool:
        return self._owner != 0 and self._owner != os.getpid()

    def _lock(self) -> threading.RLock:
        """This handle's lock in this process (a child makes its own: the parent's may have
        been held at fork). Held to reopen after fork, and to close."""
        with reopen_lock():  # held only to make the lock
            if self._rlock_pid != os.getpid():
                self._rlock, self._rlock_pid = threading.RLock(), os.getpid()
            return self._rlock

    def _abandon(self) -> None:
        """In a forked child: drop the parent's connections without touching them."""
        _inherited.extend(x for x in (self._adb, self._pool, self._primary_reads) if x is not None)
        self._primary_reads = None
        self._adb = None
        if self._owns_pool:
            self._pool = None
        self._loop = None
        self._owner = self._open_in = 0

    def _ready(self, *, write: bool = False) -> tuple[LoopThread, Database]:
        """The loop and the async Database; "not open" otherwise (for a ``write``, with the
        outcome it has: nothing was sent)."""
        if self._open_in != os.getpid():  # forked, being reopened, not yet open, or closed
            with self._lock():
                if self._forked():
                    self._reopen_in_child(write)
        if self._fork_error is not None:
            raise not_open("the SyncDatabase", write=write, reason=self._fork_error)
        if self._adb is None or self._loop is None:
            raise not_open("the SyncDatabase", write=write)
        return self._loop, self._adb

    def _reopen_in_child(self, write: bool) -> None:
        """Leave the parent's connections alone and open the child's own, once; a given pool
        or Database cannot be, and every later call says so."""
        self._abandon()
        if self._given is not None or not self._owns_pool:
            self._fork_error = (
                "a SyncDatabase given a pool or a Database cannot reconnect after fork: make "
                "them, and the SyncDatabase, in the child"
            )
            return
        try:
            self.open()
        except BaseException as exc:
            self._owner = _REOPEN  # the next call tries again
            if write and isinstance(exc, WriteBusError) and exc.outcome is None:
                exc.outcome = Outcome.NOT_APPLIED  # the write was never sent
            raise

    @property
    def tracker(self) -> LsnTracker | None:
        """The process's LSN tracker (None in the primary region, or until open here)."""
        db = self.database
        return db.tracker if db is not None else None

    @property
    def database(self) -> Database | None:
        """The async Database the writes run on (on the background loop); None until this
        handle is open in this process (a forked child's first call reopens it)."""
        return self._adb if self._open_in == os.getpid() else None

    # -- reads: the local database, in the calling thread ---------------------------------

    def _read(
        self,
        sql: SQL,
        params: Params,
        one: bool,
        row_factory: RowFactory | None,
        *,
        after: str | None,
        consistency: Consistency,
        max_lag: float | None,
        fallback: Fallback,
    ) -> Any:
        loop, db = self._ready()
        local = self._pool  # read once: close() in another thread may clear it meanwhile
        if local is None:
            raise WriteBusError("no local database: set DATABASE_URL and open the SyncDatabase")
        text, values = to_sql(sql, params)
        factory = row_factory or self.row_factory
        session = current_session()  # read here: the gate may decide in this thread
        options: dict[str, Any] = dict(
            after=after,
            consistency=consistency,
            max_lag=max_lag,
            fallback=fallback,
            session_lsn=session.lsn if session is not None else None,
        )
        # A plain read (or one whose tokens are already replayed) needs nothing from the loop
        # thread: asking it would cost two thread switches per read.
        target = db.read_target_now(**options) or loop.run(db.prepare_read(**options))
        pool = local if target == "local" else self._primary_pool()
        for attempt in (1, 2):  # a pooled connection cut while idle is retried once
            conn: psycopg.Connection[Any] | None = None
            try:
                with pool.connection() as conn:
                    cur = conn.cursor(row_factory=factory) if factory else conn.cursor()
                    with cur:
                        cur.execute(text, values)
                        return cur.fetchone() if one else cur.fetchall()
            except PoolTimeout:
                raise
            except psycopg.OperationalError:
                if attempt == 2 or conn is None or not (conn.broken or conn.closed):
                    raise
        raise AssertionError("unreachable")

    def _primary_pool(self) -> ConnectionPool[Any]:
        s = self.settings
        with self._lock():  # one pool for every thread; none once closed
            if self._primary_reads is None:
                if not s.primary_database_url or s.primary_database_url == s.database_url:
                    raise StaleReadError(
                        "fallback='primary' needs PRIMARY_DATABASE_URL set apart from "
                        "DATABASE_URL", lag=None, max_lag=0.0, region=s.region,
                    )  # fmt: skip
                if self._adb is None:
                    raise not_open("the SyncDatabase", write=False)
                self._primary_reads = open_sync_pool(
                    s.primary_database_url, name=f"writebus-sync-primary-{s.region}",
                    min_size=0, max_size=4, timeout=s.connect_timeout,
                )  # fmt: skip
            return self._primary_reads

    def fetch(
        self,
        sql: SQL,
        params: Params = None,
        *,
        row_factory: RowFactory | None = None,
        after: str | None = None,
        consistency: Consistency = None,
        max_lag: float | None = None,
        fallback: Fallback = "raise",
    ) -> list[Any]:
        """All rows of a query on the local database (options as :meth:`Database.fetch`)."""
        return self._read(  # type: ignore[no-any-return]
            sql, params, False, row_factory, after=after, consistency=consistency,
            max_lag=max_lag, fallback=fallback,
        )

    def fetchrow(
        self,
        sql: SQL,
        params: Params = None,
        *,
        row_factory: RowFactory | None = None,
        after: str | None = None,
        consistency: Consistency = None,
        max_lag: float | None = None,
        fallback: Fallback = "raise",
    ) -> Any:
        """The first row of a query, or None (options as :meth:`Database.fetch`)."""
        return self._read(
            sql, params, True, row_factory, after=after, consistency=consistency,
            max_lag=max_lag, fallback=fallback,
        )

    def fetchval(
        self,
        sql: SQL,
        params: Params = None,
        *,
        after: str | None = None,
        consistency: Consistency = None,
        max_lag: float | None = None,
        fallback: Fallback = "raise",
    ) -> Any:
        """The first column of the first row, or None (options as :meth:`Database.fetch`)."""
        row = self._read(
            sql, params, True, tuple_row, after=after, consistency=consistency,
            max_lag=max_lag, fallback=fallback,
        )  # tuple_row: the handle's row_factory would make the row a dict or an object
        return row[0] if row else None

    def session_token(self) -> str | None:
        """The highest token seen: the current session's, else this handle's newest write."""
        db = self.database
        if db is not None:
            return db.session_token()  # this thread's session first, as here
        current = current_session()
        return current.token if current is not None else None

    # -- writes: the async Database, on the loop thread -----------------------------------
    # Each runs in a copy of the caller's context (``run_coroutine_threadsafe``), so the
    # Database raises the caller's session itself, for a result or an applied error.

    def execute(self, sql: SQL, params: Params = None, **options: Any) -> WriteResult:
        """Run one write statement on the primary (:meth:`Database.execute`)."""
        loop, db = self._ready(write=True)
        return loop.run(db.execute(sql, params, **options), write=True)

    def batch(self, statements: Iterable[StatementLike], **options: Any) -> WriteResult:
        """Run statements atomically in one transaction on the primary (:meth:`Database.batch`)."""
        loop, db = self._ready(write=True)
        return loop.run(db.batch(list(statements), **options), write=True)

    def call(self, procedure: str, *args: Any, **options: Any) -> Any:
        """Run a registered procedure on the primary and wait for replay (:meth:`Database.call`)."""
        return self.call_result(procedure, *args, **options).value

    def call_result(self, procedure: str, *args: Any, **options: Any) -> WriteResult:
        """Like :meth:`call` but returns the whole :class:`WriteResult`."""
        loop, db = self._ready(write=True)
        return loop.run(db.call_result(procedure, *args, **options), write=True)

    def rpc_region(self, region: str, procedure: str, *args: Any, **options: Any) -> Any:
        """Run a registered procedure in ``region`` (:meth:`Database.rpc_region`)."""
        loop, db = self._ready(write=True)
        return loop.run(db.rpc_region(region, procedure, *args, **options), write=True)

    def rpc_primary(self, procedure: str, *args: Any, **options: Any) -> Any:
        """Run a registered procedure in the primary region (:meth:`Database.rpc_primary`)."""
        loop, db = self._ready(write=True)
        return loop.run(db.rpc_primary(procedure, *args, **options), write=True)

    def wait_for_lsn(
        self, lsn: int, timeout: float | None = None, timeline: int | None = None
    ) -> int:
        """Wait until the local replica has replayed ``lsn`` (:meth:`Database.wait_for_lsn`)."""
        loop, db = self._ready()
        return loop.run(db.wait_for_lsn(lsn, timeout, timeline))


def _mirror_signatures() -> None:
    """Give each delegating method the async method's parameters (``help()``, IDEs, the
    parity test) -- one list of options, kept in :class:`Database`."""
    import inspect

    for name in (
        "execute", "batch", "call", "call_result", "rpc_region", "rpc_primary", "wait_for_lsn",
    ):
        method = getattr(SyncDatabase, name)
        method.__signature__ = inspect.signature(getattr(Database, name))


_mirror_signatures()
