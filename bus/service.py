"""The bus service: one process per region node (``writebus serve``).

In every region it serves ``<prefix>.rpc.<region>``. When its database is the primary
(``pg_is_in_recovery()`` is false) it also serves ``<prefix>.write`` and announces the primary's
LSN; when its database is a standby it broadcasts replay progress. If the standby is promoted
the node switches to the primary role. SIGTERM drains: in-flight requests finish and reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from typing import Any

from psycopg_pool import AsyncConnectionPool

from writebus.bus import idempotency, partitions, standing
from writebus.bus.cadence import Cadence
from writebus.bus.committer import Committer
from writebus.bus.execute import Job, Limits, run_statement_writes
from writebus.bus.fence import Fence
from writebus.bus.group import Executed
from writebus.bus.handler import Handler
from writebus.bus.log import log_level
from writebus.bus.monitor import PrimaryAnnouncer, ReplicaMonitor
from writebus.bus.ops import NodeOps
from writebus.bus.pg import durable_commits
from writebus.bus.served import RequestLog
from writebus.bus.settings import BusSettings
from writebus.bus.worker import SubjectServer
from writebus.client.connect import connect_nats
from writebus.client.errors import ConfigError, WriteBusError
from writebus.client.log import get_logger
from writebus.client.pgpool import open_pool
from writebus.client.procedures import Procedures, load_procedures
from writebus.client.retry import RetryPolicy
from writebus.client.subjects import Subjects
from writebus.client.version import VERSION

log = get_logger("writebus.bus.service")

#: The pauses between a promoted node's tries to take over (0.1 s, doubling, at most 5 s).
TAKE_OVER_RETRY = RetryPolicy(base_delay=0.1, max_delay=5.0)


class BusService:
    """A region node of the bus. ``async with BusService(settings):`` or start/stop."""

    def __init__(
        self,
        settings: BusSettings,
        *,
        procedures: Procedures | None = None,
        idempotency_window: float | None = None,
    ) -> None:
        self.settings = settings
        self.procedures = procedures or load_procedures(settings.procedures)
        self.subjects = Subjects(settings.prefix)
        self.replica_id = settings.replica_id or f"{settings.region}-{socket.gethostname()}"
        self.idempotency_window = (
            idempotency_window if idempotency_window is not None else settings.idempotency_window
        )
        self.role: str | None = None
        self.nc: Any = None
        self.pool: AsyncConnectionPool | None = None
        self.handler: Handler | None = None
        self.rpc_server: SubjectServer | None = None
        self.write_server: SubjectServer | None = None
        self.monitor: ReplicaMonitor | None = None
        self.announcer: PrimaryAnnouncer | None = None
        self.ops: NodeOps | None = None
        self.committer: Committer | None = None
        self.fence = Fence(self.replica_id)
        self._watch: asyncio.Task[None] | None = None
        self._fencing: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._stopping = False
        #: Why a promoted node is not serving writes yet: its last try to take over failed.
        self._take_over_error: str | None = None

    def __repr__(self) -> str:
        return f"<BusService region={self.settings.region!r} role={self.role}>"

    @property
    def dsn(self) -> str:
        """The database this node serves: the primary in the primary region, else local."""
        s = self.settings
        if s.is_primary and s.primary_database_url:
            return s.primary_database_url
        return s.database_url

    async def start(self) -> None:
        """Connect, find the database's role, subscribe, and start publishing progress."""
        s = self.settings
        if not self.dsn:
            raise ConfigError(
                "DATABASE_URL (or PRIMARY_DATABASE_URL) is not set: the bus node needs its "
                "region's database",
                variable="DATABASE_URL",
            )
        # no_echo: the node hears other nodes' broadcasts, not its own announcements.
        self.nc = await connect_nats(s, name=f"writebus-bus-{s.region}", no_echo=True)
        self.pool = await open_pool(
            self.dsn,
            name=f"writebus-bus-{s.region}",
            min_size=2,
            max_size=max(2, s.max_concurrency),
            timeout=s.connect_timeout,
            configure=self._configure_connection,
        )
        in_recovery = await standing.in_recovery(self.pool)
        self.handler = Handler(
            pool=self.pool,
            procedures=self.procedures,
            region=s.region,
            limits=Limits(allow_sql=s.allow_sql, max_reply_bytes=self.nc.max_payload),
            observers=[RequestLog(log_level(s.request_log_level, "WRITEBUS_REQUEST_LOG_LEVEL"))],
        )
        self.handler.may_commit = self._commit_refused
        self.ops = NodeOps(self)
        self.handler.observers.extend(self.ops.observers)
        self.handler.node_info.update(
            role="starting",  # until the role is known: its pings give no flush position
            replica_id=self.replica_id,
            primary_region=s.primary_region,
            prefix=s.prefix,
            version=VERSION,
        )
        self.rpc_server = SubjectServer(
            self.nc,
            self.subjects.rpc(s.region),
            self.subjects.queue("rpc"),
            self._handle_rpc,
            concurrency=s.max_concurrency,
        )
        await self.rpc_server.start()
        await self.ops.start(self.nc)  # hears other primaries before this node serves writes
        if in_recovery:
            await self._become_replica()
        else:
            await self._become_primary()
        log.info(
            "bus.ready",
            region=s.region,
            role=self.role,
            primary_region=s.primary_region,
            prefix=s.prefix,
            replica_id=self.replica_id,
            procedures=self.procedures.names(),
            allow_sql=s.allow_sql,
            http=f"{self.ops.http.addr[0]}:{self.ops.http.port}" if self.ops.http else None,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    def in_flight(self) -> dict[str, int]:
        """Requests being handled now, per served subject."""
        return {
            srv.subject: srv.in_flight
            for srv in (self.write_server, self.rpc_server)
            if srv is not None
        }

    async def _handle_rpc(
        self, data: bytes, headers: dict[str, str] | None, received: float
    ) -> tuple[bytes, dict[str, str] | None]:
        assert self.handler is not None
        return await self.handler.handle(
            data,
            headers,
            write=False,
            primary=self.role == "primary",
            received=received,
            subject=self.subjects.rpc(self.settings.region),
        )

    async def _handle_write(
        self, data: bytes, headers: dict[str, str] | None, received: float
    ) -> tuple[bytes, dict[str, str] | None]:
        assert self.handler is not None
        return await self.handler.handle(
            data,
            headers,
            write=True,
            primary=True,
            received=received,
            subject=self.subjects.write,
        )

    async def _configure_connection(self, conn: Any) -> None:
        """Every new database connection: durable commits, and -- on a primary node -- a
        check that the database is still the primary (it may have been demoted while the
        connection was down)."""
        await durable_commits(conn)
        if self.role == "primary" and self.announcer is not None:
            cur = await conn.execute("SELECT pg_is_in_recovery()")
            row = await cur.fetchone()
            if row and row[0]:
                log.warning("bus.demoted_on_reconnect", region=self.settings.region)
                self.announcer.demoted.set()

    def heard_primary(self, update: Any) -> None:
        """Another node announced itself primary (in any region): fence this one if that
        primary is newer; a replica node relays its timeline to its region's clients."""
        if self.monitor is not None:
            self.monitor.heard_primary(update)
        if self.role not in ("primary", "starting") or self._stopping:
            return
        if self.fence.heard_primary(
            region=update.region, replica_id=update.replica_id, timeline=update.timeline
        ):
            log.error("bus.fenced", region=self.settings.region, reason=self.fence.reason())
            if self.role == "primary":
                self._fencing = asyncio.create_task(self._leave_write_group(), name="bus-fence")

    def problem(self) -> str | None:
        """Why this node is not doing its job, if it is not (for /healthz)."""
        return self._commit_refused() or self._take_over_error

    def _commit_refused(self) -> str | None:
        """Why a write must not commit here (fenced); a take-over's last failure is not one:
        the try that succeeds takes writes before it returns."""
        return self.fence.reason() or None

    async def _leave_write_group(self) -> None:
        await self._leave_primary()
        self._set_role("fenced")

    async def _leave_primary(self) -> None:
        """Stop serving writes, announcing and expiring: demoted, fenced, or a take-over that
        failed part-way (whatever it had started)."""
        if self.write_server is not None:
            await self.write_server.stop()
            self.write_server = None
        await self._stop_committer()
        if self.announcer is not None:
            await self.announcer.stop()
            self.announcer = None
        if self.handler is not None:
            self.handler.on_commit = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _set_role(self, role: str) -> None:
        self.role = role
        if self.handler is not None:
            self.handler.node_info["role"] = role

    async def _become_primary(
        self, *, promoted: bool = False, fork: tuple[int, int] | None = None
    ) -> None:
        s = self.settings
        assert self.pool is not None and self.handler is not None
        self._set_role("starting")
        self.fence.timeline = await standing.timeline(self.pool)
        self.handler.timeline = self.fence.timeline
        deadline = asyncio.get_running_loop().time() + s.fence_wait
        while not self.fence.fenced and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # listening for a newer primary (see bus/fence.py)
        if self.fence.fenced:
            self._set_role("fenced")
            return
        try:
            async with self.pool.connection() as conn:
                await idempotency.ensure_schema(conn, self.idempotency_window)
        except ConfigError as exc:
            if not promoted:
                raise  # at start: one clear line, and the node does not start
            # Promoted by a failover: serve writes while the partitions made ahead last,
            # rather than stay stuck "starting" with the region's writes refused.
            log.error("bus.schema_not_made", region=s.region, error=str(exc))
        self.announcer = PrimaryAnnouncer(
            nc=self.nc,
            dsn=self.dsn,
            subject=self.subjects.lsn(s.region),
            region=s.region,
            replica_id=self.replica_id,
            heartbeat=s.heartbeat_interval,
            timeline=self.fence.timeline,  # from the first announcement: trackers need it
            on_timeline=self._timeline_moved,
            fork=fork[0] if fork is not None and fork[1] == self.fence.timeline else None,
        )
        self.handler.on_commit = self.announcer.committed
        await self.announcer.start()
        self._start_committer()
        self.write_server = SubjectServer(
            self.nc,
            self.subjects.write,
            self.subjects.queue("write"),
            self._handle_write,
            concurrency=s.max_concurrency,
        )
        await self.write_server.start()
        self._expiry = asyncio.create_task(
            partitions.maintain_forever(self.pool, self.idempotency_window),
            name="idempotency-expiry",
        )
        self._watch = asyncio.create_task(self._watch_demotion(), name="watch-demotion")
        self._set_role("primary")
        if self.fence.fenced:  # a newer primary was heard while this one was starting
            self._fencing = asyncio.create_task(self._leave_write_group(), name="bus-fence")

    def _timeline_moved(self, timeline: int | None) -> None:
        """The database is on another timeline under this node (its address moved): a newer
        one is adopted -- replies say it, or trackers take every write for a lost one -- and
        an older one fences the node (:meth:`Fence.moved`)."""
        if self.fence.moved(timeline, region=self.settings.region):
            log.error("bus.fenced", region=self.settings.region, reason=self.fence.reason())
            self._fencing = asyncio.create_task(self._leave_write_group(), name="bus-fence")
        elif self.handler is not None:
            self.handler.timeline = timeline

    def _start_committer(self) -> None:
        s = self.settings
        assert self.handler is not None and self.pool is not None
        handler, pool = self.handler, self.pool

        async def run(jobs: list[Job]) -> list[Executed | WriteBusError]:
            return await run_statement_writes(
                pool, jobs, limits=handler.limits, region=s.region, may_commit=self._commit_refused
            )

        self.committer = Committer(
            run,
            connections=s.group_connections,
            max_connections=s.max_concurrency,
            max_count=s.group_max,
            name=s.region,
            adaptive=s.group_adaptive and s.group_max > 1,
        )
        self.committer.start()
        handler.committer = self.committer

    async def _stop_committer(self) -> None:
        committer, self.committer = self.committer, None
        if self.handler is not None:
            self.handler.committer = None
        if committer is not None:
            await committer.stop()

    async def _become_replica(self) -> None:
        s = self.settings
        self.monitor = ReplicaMonitor(
            nc=self.nc,
            dsn=self.dsn,
            subject=self.subjects.lsn(s.region),
            primary_subject=self.subjects.lsn(s.primary_region),
            region=s.region,
            replica_id=self.replica_id, cadence=Cadence(heartbeat=s.heartbeat_interval),
        )  # fmt: skip
        await self.monitor.start()
        self._watch = asyncio.create_task(self._watch_promotion(), name="watch-promotion")
        self._set_role("replica")

    async def _watch_promotion(self) -> None:
        assert self.monitor is not None
        await self.monitor.promoted.wait()
        if self._stopping:
            return
        log.warning("bus.promoted", region=self.settings.region)
        fork = self.monitor.fork  # seen as it was promoted: every try announces this one
        await self.monitor.stop()
        self.monitor = None
        await self._take_over(fork)

    async def _take_over(self, fork: tuple[int, int] | None) -> None:
        """Become the primary node after a promotion, trying until it works: a failure here (a
        connection cut as the database restarted as a primary, say) must not leave the node
        "starting" for good, with its region's writes refused. Each failure is logged
        (``bus.take_over_failed``) and fails ``/healthz`` until a try succeeds, or the database
        is a standby again (rebuilt as one): then it is a replica node (``bus.take_over_abandoned``)."""
        for attempt in itertools.count(1):
            if self._stopping:
                return
            try:
                await self._become_primary(promoted=True, fork=fork)
                self._take_over_error = None
                return
            except Exception as exc:
                delay = TAKE_OVER_RETRY.backoff(attempt)
                self._take_over_error = f"promoted, but not serving writes yet: {exc}"
                log.error("bus.take_over_failed", region=self.settings.region, error=str(exc),
                          attempt=attempt, retry_in=round(delay, 2))  # fmt: skip
                await self._leave_primary()
                self._set_role("starting")
                if self.pool is not None and await standing.standby_if_known(self.pool):
                    log.warning("bus.take_over_abandoned", region=self.settings.region,
                                reason="the database is a standby again")  # fmt: skip
                    self._take_over_error, self.fence = None, Fence(self.replica_id)
                    await self._become_replica()
                    return
                await asyncio.sleep(delay)

    async def _watch_demotion(self) -> None:
        # After a failover the old primary comes back as a standby: it must leave the write
        # queue group, or writes routed to it would fail as read-only while the new primary is
        # healthy.
        assert self.announcer is not None
        await self.announcer.demoted.wait()
        if self._stopping:
            return
        log.warning("bus.demoted", region=self.settings.region)
        await self._leave_primary()
        await self._become_replica()

    async def stop(self, timeout: float = 30.0) -> None:
        """Drain: stop taking requests, finish and answer in-flight ones, then disconnect."""
        self._stopping = True
        log.info("bus.draining", region=self.settings.region)
        await _cancel(self._watch)  # first: a take-over under way would serve what isn't drained
        servers = [srv for srv in (self.write_server, self.rpc_server) if srv is not None]
        await asyncio.gather(*(srv.stop(timeout) for srv in servers))
        await self._stop_committer()  # after the drain: in-flight writes were answered
        for task in (self._expiry, self._fencing):
            await _cancel(task)
        if self.monitor is not None:
            await self.monitor.stop()
        if self.announcer is not None:
            await self.announcer.stop()
        if self.ops is not None:
            await self.ops.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.pool is not None:
            await self.pool.close()
        log.info("bus.stopped", region=self.settings.region)

    async def __aenter__(self) -> BusService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it; a task that had failed is logged, not raised: the
    drain that cancels it must go on."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        log.error("bus.task_failed", task=task.get_name(), error=str(exc))
