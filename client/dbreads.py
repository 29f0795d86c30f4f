"""The read half of :class:`~writebus.client.db.Database`: local reads, and what they wait for.

Reads always run on the local database -- the region's replica -- unless a bounded-staleness
read falls back to the primary. A mixin, so the read API (and its docstrings) sits in one module
and the write API in another; both share the Database's state.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from writebus.client.errors import WriteBusError, not_open
from writebus.client.reads import Consistency, Fallback, ReadGate, Target
from writebus.client.rows import RowFactory
from writebus.client.settings import Settings
from writebus.client.tokens import Session, current_session
from writebus.client.tracker import LsnTracker
from writebus.client.transport import NatsClient
from writebus.client.writes import SQL, Params, to_sql


class ReadAPI:
    """fetch, fetchrow, fetchval; waiting for replay; session tokens."""

    settings: Settings
    row_factory: RowFactory | None
    _pool: AsyncConnectionPool[Any] | None
    _nc: NatsClient | None
    _tracker: LsnTracker | None
    _gate: ReadGate
    _high: Session

    async def _nats(self, timeout: float) -> tuple[NatsClient | None, float]:
        raise NotImplementedError  # the Database's: the connection, reopened if closed for good

    def _local(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise WriteBusError("no local database: set DATABASE_URL and open the Database")
        return self._pool

    async def _read(
        self, sql: SQL, params: Params, one: bool, row_factory: RowFactory | None, **gate: Any
    ) -> Any:
        text, values = to_sql(sql, params)
        factory = row_factory or self.row_factory
        target = await self.prepare_read(**gate)
        pool = self._local() if target == "local" else await self._gate.primary_pool()
        # A pooled connection can have been cut while idle (the replica restarted): psycopg
        # reports that on first use. Try once more on a fresh connection; the pool discards
        # the broken one.
        for attempt in (1, 2):
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                async with pool.connection() as conn:
                    cur = conn.cursor(row_factory=factory) if factory else conn.cursor()
                    async with cur:
                        await cur.execute(text, values)
                        return await (cur.fetchone() if one else cur.fetchall())
            except PoolTimeout:
                raise
            except psycopg.OperationalError:
                if attempt == 2 or conn is None or not (conn.broken or conn.closed):
                    raise
        raise AssertionError("unreachable")

    async def fetch(
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
        """All rows of a query on the local database.

        ``after=token`` first waits until the local replica has replayed that write (as does
        the current session's token, see :func:`writebus.session`); ``consistency="strong"``
        sees every write committed anywhere before the call; ``max_lag=S`` reads only from a
        replica at most ``S`` seconds behind, else raises :class:`StaleReadError` or, with
        ``fallback="primary"``, reads the primary. See :mod:`writebus.client.reads`.
        """
        return await self._read(  # type: ignore[no-any-return]
            sql,
            params,
            False,
            row_factory,
            after=after,
            consistency=consistency,
            max_lag=max_lag,
            fallback=fallback,
        )

    async def fetchrow(
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
        """The first row of a query on the local database, or None (options as :meth:`fetch`)."""
        return await self._read(
            sql,
            params,
            True,
            row_factory,
            after=after,
            consistency=consistency,
            max_lag=max_lag,
            fallback=fallback,
        )

    async def fetchval(
        self,
        sql: SQL,
        params: Params = None,
        *,
        after: str | None = None,
        consistency: Consistency = None,
        max_lag: float | None = None,
        fallback: Fallback = "raise",
    ) -> Any:
        """The first column of the first row, or None (options as :meth:`fetch`)."""
        row = await self._read(
            sql,
            params,
            True,
            tuple_row,  # the handle's row_factory would make the row a dict or an object
            after=after,
            consistency=consistency,
            max_lag=max_lag,
            fallback=fallback,
        )
        return row[0] if row else None

    async def prepare_read(
        self,
        *,
        after: str | None = None,
        consistency: Consistency = None,
        max_lag: float | None = None,
        fallback: Fallback = "raise",
        session_lsn: int | None = None,
    ) -> Target:
        """Wait for what a read needs and return where it runs (``"local"`` or ``"primary"``).

        ``session_lsn`` defaults to the current session's (:func:`writebus.session`); the sync
        API passes it explicitly, its session living in the caller's thread.
        """
        if session_lsn is None:
            current = current_session()
            session_lsn = current.lsn if current is not None else None
        # A strong read needs the bus: a connection closed for good is reopened first. Other
        # reads need none (a token's check is skipped without it): they never wait for one.
        nc = (await self._nats(self.settings.rpc_timeout))[0] if consistency == "strong" else self._nc
        return await self._gate.prepare(
            nc=nc,
            tracker=self._tracker,
            after=after,
            session_lsn=session_lsn,
            consistency=consistency,
            max_lag=max_lag,
            fallback=fallback,
            timeout=None,
        )

    def read_target_now(
        self,
        *,
        after: str | None = None,
        consistency: Consistency = None,
        max_lag: float | None = None,
        fallback: Fallback = "raise",
        session_lsn: int | None = None,
    ) -> Target | None:
        """Where a read runs, when that is known without waiting: a plain read, or one whose
        tokens are already replayed (``"local"``). None: :meth:`prepare_read` must wait. Safe
        from any thread (the sync API asks before crossing to the loop)."""
        return self._gate.at_once(
            tracker=self._tracker, after=after, session_lsn=session_lsn,
            consistency=consistency, max_lag=max_lag, fallback=fallback,
        )  # fmt: skip

    def session_token(self) -> str | None:
        """The highest token seen: the current session's, else this Database's newest write."""
        current = current_session()
        held = current if current is not None and current.lsn is not None else self._high
        return held.token

    async def wait_for_lsn(
        self, lsn: int, timeout: float | None = None, timeline: int | None = None
    ) -> int:
        """Wait until the local replica has replayed ``lsn``; return the replayed position.

        With the write's ``timeline`` (:attr:`WriteResult.timeline`), a promotion that left
        the write behind raises :class:`~writebus.client.errors.LostInFailoverError`."""
        if self.settings.is_primary:
            return lsn  # the primary region reads the primary: nothing to wait for
        if self._tracker is None:
            raise not_open("the Database", write=False)
        wait = timeout if timeout is not None else self.settings.replication_timeout
        return await self._tracker.wait_for(lsn, wait, timeline)

    def saw(self, lsn: int | None, timeline: int | None = None) -> None:
        """Record a commit (on ``timeline``, if known) this process made or learned of: the
        current session and this Database's high-water mark. Once this region's database is
        promoted, they no longer count what older timelines committed past the fork
        (:attr:`forks`, :class:`~writebus.client.tokens.Session`): the new primary may never
        reach it."""
        self._high.saw(lsn, timeline, self)
        current = current_session()
        if current is not None:
            current.saw(lsn, timeline, self)

    @property
    def forks(self) -> dict[int, int]:
        """Each promotion of this region's database whose fork was announced: new timeline ->
        where the history forked (:attr:`LsnTracker.forks
        <writebus.client.tracker.LsnTracker.forks>`); empty before, or while closed."""
        tracker = self._tracker  # once: the loop thread may close it meanwhile
        return tracker.forks if tracker is not None else {}
