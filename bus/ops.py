"""What an operator sees of a bus node: metrics, health, status messages, the cluster's lag.

:class:`NodeOps` is attached to a :class:`~writebus.bus.service.BusService` and reads it through
the small :class:`Node` protocol. It owns:

* the Prometheus metrics (:mod:`.metrics`) and the status window, both fed by the handler's
  per-request records;
* the HTTP listener (:mod:`.http`: ``/metrics``, ``/healthz``, ``/readyz``);
* the status publisher (:mod:`.status`, ``<prefix>.status.<region>``);
* a :class:`~writebus.client.cluster.ClusterView` of every region's progress broadcasts, for the
  per-region lag metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool

from writebus.bus import discovery
from writebus.bus.health import HealthFacts
from writebus.bus.metrics import Metrics, NodeReadings
from writebus.bus.served import Observer
from writebus.bus.settings import BusSettings
from writebus.bus.status import StatusPublisher, StatusWindow
from writebus.client.cluster import ClusterView
from writebus.client.log import get_logger
from writebus.client.lsn import format_lsn
from writebus.client.protocol import LsnUpdate, decode, encoding_of
from writebus.client.subjects import Subjects
from writebus.client.transport import NatsClient
from writebus.client.version import VERSION

log = get_logger("writebus.bus.ops")


#: Seconds a database check's verdict answers later health probes (:meth:`NodeOps.facts`).
DATABASE_CHECK_TTL = 1.0


class Node(Protocol):
    """The parts of a bus node :class:`NodeOps` reads."""

    settings: BusSettings
    replica_id: str
    role: str | None
    nc: Any
    pool: AsyncConnectionPool[Any] | None
    monitor: Any
    announcer: Any

    @property
    def dsn(self) -> str: ...

    def in_flight(self) -> dict[str, int]: ...

    def heard_primary(self, update: LsnUpdate) -> None: ...

    def problem(self) -> str | None: ...


class NodeOps:
    """Metrics, health, status and the cluster view of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        s = node.settings
        self.subjects = Subjects(s.prefix)
        self.window = StatusWindow()
        self.cluster = ClusterView(stale_after=3 * s.heartbeat_interval + 0.5)
        self.metrics = Metrics(
            s.region,
            NodeReadings(
                in_flight=node.in_flight,
                pool_stats=self._pool_stats,
                lag=self.region_lag,
                broadcasts=self._broadcasts,
                polls=lambda: node.monitor.polls if node.monitor is not None else 0,
                role=lambda: node.role or "starting",
                groups=self._groups,
                group_slots=self._group_slots,
                group_past_slots=self._group_past_slots,
                version=VERSION,
            ),
        )
        self.http: Any = None
        self.micro: Any = None
        self.status: StatusPublisher | None = None
        self._sub: Any = None
        self._db_check: asyncio.Task[tuple[bool, str | None]] | None = None
        self._db_verdict: tuple[float, tuple[bool, str | None]] | None = None

    @property
    def observers(self) -> list[Observer]:
        """What the handler must tell about each served request. With the HTTP listener off
        (``WRITEBUS_HTTP_ADDR=off``) nothing can scrape the metrics, so they are not kept."""
        if self.node.settings.http_addr is None:
            return [self.window]
        return [self.metrics.observe, self.window]

    async def start(self, nc: NatsClient) -> None:
        """Listen to every region's progress, publish status, serve HTTP."""
        s = self.node.settings
        self._sub = await nc.subscribe(self.subjects.lsn_all, cb=self._on_progress)
        self.status = StatusPublisher(
            nc,
            self.subjects.status(s.region),
            self.window,
            self.readings,
            interval=s.heartbeat_interval,
        )
        self.status.start()
        self.micro = await discovery.register(
            nc,
            region=s.region,
            prefix=s.prefix,
            replica_id=self.node.replica_id,
            subjects=[self.subjects.write, self.subjects.rpc(s.region)],
        )
        if s.http_addr is not None:
            from writebus.bus.http import HttpServer  # aiohttp: only when serving HTTP

            self.http = HttpServer(s.http_addr, metrics=self.metrics, facts=self.facts)
            await self.http.start()

    async def stop(self) -> None:
        """Stop everything started."""
        if self.status is not None:
            await self.status.stop()
        if self.micro is not None:
            with contextlib.suppress(Exception):
                await self.micro.stop()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self.http is not None:
            await self.http.stop()
        check = self._db_check  # shielded from its probes: nothing else cancels it
        if check is not None:
            check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await check

    # -- readings ---------------------------------------------------------------------------

    async def _on_progress(self, msg: Any) -> None:
        try:
            upd = decode(msg.data, LsnUpdate, encoding_of(msg.headers, msg.data))
            self.cluster.observe(upd, time.monotonic())
        except Exception:  # a bad broadcast is the sender's problem; keep listening
            return
        if upd.role == "primary":
            self.node.heard_primary(upd)

    def _pool_stats(self) -> dict[str, int]:
        pool = self.node.pool
        return pool.get_stats() if pool is not None else {}

    def _groups(self) -> tuple[int, int]:
        committer = getattr(self.node, "committer", None)
        return (committer.groups, committer.requests) if committer is not None else (0, 0)

    def _group_slots(self) -> int:
        committer = getattr(self.node, "committer", None)
        return committer.slots if committer is not None else 0

    def _group_past_slots(self) -> dict[str, int]:
        committer = getattr(self.node, "committer", None)
        if committer is None:
            return {}
        return dict(committer.past_slots)

    def _broadcasts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.node.monitor is not None:
            out["replica"] = self.node.monitor.published
        if self.node.announcer is not None:
            out["primary"] = self.node.announcer.published
        return out

    def local_lag(self) -> tuple[int | None, float | None]:
        """This node's database: 0 on the primary; the replica monitor's measurement else."""
        if self.node.role == "primary":
            return 0, 0.0
        monitor = self.node.monitor
        if monitor is None:
            return None, None
        now = time.monotonic()
        return monitor.lag.lag_bytes(now), monitor.lag.lag_seconds(now)

    def region_lag(self) -> dict[str, tuple[int | None, float | None]]:
        """Per region, its replicas' lag as this node sees it (its own region measured here)."""
        lag = self.cluster.region_lag(time.monotonic())
        if self.node.role == "replica":
            lag[self.node.settings.region] = self.local_lag()
        return lag

    def readings(self) -> dict[str, Any]:
        """The node's own fields of a status message."""
        s = self.node.settings
        stats = self._pool_stats()
        lag_bytes, lag_seconds = self.local_lag()
        lsn = self._local_lsn()
        return dict(
            region=s.region,
            replica_id=self.node.replica_id,
            role=self.node.role or "starting",
            version=VERSION,
            in_flight=sum(self.node.in_flight().values()),
            concurrency=s.max_concurrency,
            pool_size=stats.get("pool_size", 0),
            pool_available=stats.get("pool_available", 0),
            pool_max=stats.get("pool_max", 0),
            pool_waiting=stats.get("requests_waiting", 0),
            lsn=format_lsn(lsn) if lsn is not None else None,
            lsn_int=lsn,
            lag_bytes=lag_bytes,
            lag_seconds=lag_seconds,
        )

    def _local_lsn(self) -> int | None:
        if self.node.role == "primary" and self.node.announcer is not None:
            return int(self.node.announcer._latest) or None
        if self.node.monitor is not None:
            replayed = self.node.monitor.state.replayed
            return int(replayed) if replayed is not None else None
        return None

    async def facts(self) -> HealthFacts:
        """What ``/healthz`` and ``/readyz`` judge: NATS, a live query, the role, the lag."""
        database_ok, error = await self._database_ok()
        lag_bytes, lag_seconds = self.local_lag()
        nc = self.node.nc
        return HealthFacts(
            region=self.node.settings.region,
            role=self.node.role,
            nats_connected=bool(nc is not None and nc.is_connected),
            database_ok=database_ok,
            database_error=error,
            lag_bytes=lag_bytes,
            lag_seconds=lag_seconds,
            version=VERSION,
            problem=self.node.problem(),
        )

    async def _database_ok(self) -> tuple[bool, str | None]:
        """The database's verdict: one check at a time, a good one kept for
        :data:`DATABASE_CHECK_TTL`. A load balancer, the platform's check and a scraper ask
        many times a second, and on a busy primary each check opened a connection of its
        own: enough of them filled ``max_connections``, and busy became down. A bad verdict
        is not kept: a database back up is seen at the next probe."""
        cached = self._db_verdict
        if cached is not None and time.monotonic() - cached[0] < DATABASE_CHECK_TTL:
            return cached[1]
        if self._db_check is None:
            self._db_check = asyncio.create_task(self._check_database(), name="health-db-check")
            self._db_check.add_done_callback(self._checked)
        return await asyncio.shield(self._db_check)

    def _checked(self, task: asyncio.Task[tuple[bool, str | None]]) -> None:
        self._db_check = None
        ok = not task.cancelled() and task.exception() is None and task.result()[0]
        self._db_verdict = (time.monotonic(), task.result()) if ok else None

    async def _check_database(self) -> tuple[bool, str | None]:
        """A live query, within 2 s: on a pooled connection -- or, when every one is busy (a
        busy primary, a pile-up behind a lock), on a connection of its own, so that a node
        that is only busy is not reported down (and restarted by its health check)."""
        pool = self.node.pool
        if pool is None:
            return False, "no connection pool yet"
        try:
            async with asyncio.timeout(2.0):
                stats = pool.get_stats()
                if (
                    stats.get("pool_available", 0) == 0
                    and stats.get("pool_size", 0) >= pool.max_size
                ):
                    conn = await psycopg.AsyncConnection.connect(self.node.dsn, connect_timeout=2)
                    async with conn:
                        await conn.execute("SELECT 1")
                else:
                    async with pool.connection(timeout=2.0) as pooled:
                        await pooled.execute("SELECT 1")
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"[:300]
        return True, None
