"""Two simulated regions on one machine: the embedded stack.

Topology (``syd`` primary, ``lax`` replica region; every arrow marked WAN goes through the delay
proxy, which runs in its own process)::

    syd: Postgres primary  <--WAN--  lax: Postgres streaming replica (replication connection)
                           <--WAN--  lax: direct connections to the primary (benchmarks)
    syd: nats-server  --WAN-->  lax gateway      (syd's outbound gateway connection)
    lax: nats-server  --WAN-->  syd gateway      (lax's outbound gateway connection)

Each nats-server advertises its proxy address as its gateway address, so gateway gossip points at
the proxy too. With ``one_way_delay_ms=0`` the proxy still sits in the path, so the topology is
the same whatever the delay.

Every server runs in a process group of its own, watched by the process-wide watchdog
(:mod:`writebus.bus.embedded.watchdog`): if this process dies without :meth:`Stack.stop`, even
by SIGKILL, the servers are stopped and a temporary directory is removed all the same.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

import psycopg

from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.child import ChildProcess
from writebus.bus.embedded.environ import PINNED
from writebus.bus.embedded.errors import EmbeddedError, WaitTimeout
from writebus.bus.embedded.nats import NatsServer
from writebus.bus.embedded.pgconf import synchronous_standby_settings
from writebus.bus.embedded.ports import LOCALHOST, free_ports
from writebus.bus.embedded.postgres import AUTO, PostgresServer
from writebus.bus.embedded.proxy import ProxyProcess, Route
from writebus.bus.embedded.stackdir import (
    DirLock,
    StackPorts,
    choose_ports,
    describe,
    read_ports,
    region_env,
    wait_ports_free,
    write_ports,
)
from writebus.bus.embedded.watchdog import watchdog
from writebus.client.log import get_logger

log = get_logger("writebus.bus.embedded.stack")

_T = TypeVar("_T")

#: How long a stack started again on a directory waits for the previous run's servers to let
#: go of its ports (after a hard kill, the watchdog may still be stopping them).
REUSE_WAIT_SECONDS = 20.0

__all__ = ["Stack", "StackPorts", "region_env"]


class Stack:
    """Postgres primary + streaming replica and one nats-server per region, joined by a WAN proxy.

    ``base_dir=None`` makes a fresh temporary directory, removed by :meth:`stop` unless
    ``keep=True``; a ``base_dir`` you name is always kept, and a later stack on it starts the
    same servers again: same data (no ``initdb``, no base backup) and the same ports (saved in
    ``ports.json``). ``base_port=N`` puts the ports at N, N+1, ... (see :class:`StackPorts`);
    otherwise they are free ones chosen at start. ``fsync=False`` makes Postgres fast and
    crash-unsafe. ``pg_bindir`` and ``pg_run_as`` are passed to :class:`PostgresServer`
    (default: auto-detected). ``synchronous=True`` makes the replica the primary's synchronous
    standby (see :func:`synchronous_standby_settings`); once promoted, it has none itself.
    """

    def __init__(
        self,
        *,
        primary_region: str = "syd",
        replica_region: str = "lax",
        one_way_delay_ms: float = 0.0,
        fsync: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
        keep: bool = False,
        pg_bindir: str | os.PathLike[str] | None = None,
        pg_run_as: str | None = AUTO,
        base_port: int | None = None,
        synchronous: bool = False,
    ) -> None:
        if primary_region == replica_region:
            raise ValueError("primary_region and replica_region must differ")
        if base_port is not None:
            StackPorts.from_base(base_port, (primary_region, replica_region))  # ValueError
        self.primary_region = primary_region
        self.replica_region = replica_region
        self.one_way_delay_ms = one_way_delay_ms
        self.fsync = fsync
        self.synchronous = synchronous
        self.keep = keep
        self._requested_base_dir = Path(base_dir) if base_dir is not None else None
        self._pg_bindir = pg_bindir
        self._pg_run_as = pg_run_as
        self.base_port = base_port
        self._base_dir: Path | None = None
        self._owns_base_dir = False
        self._lock: DirLock | None = None
        #: True when the last start() found the servers of an earlier run in ``base_dir``.
        self.reused = False
        self._ports: StackPorts | None = None
        self._primary: PostgresServer | None = None
        self._replica: PostgresServer | None = None
        self._nats: dict[str, NatsServer] = {}
        self._proxy: ProxyProcess | None = None
        self._buses: list[BusProcess] = []
        self._started = False
        self.startup_seconds: float | None = None

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return (
            f"<Stack {self.primary_region}->{self.replica_region}"
            f" delay={self.one_way_delay_ms}ms {state} dir={self._base_dir}>"
        )

    # --- accessors --------------------------------------------------------------------------

    @property
    def regions(self) -> tuple[str, str]:
        """``(primary_region, replica_region)``."""
        return (self.primary_region, self.replica_region)

    @property
    def base_dir(self) -> Path:
        """The directory holding data directories, configs and logs."""
        return self._require(self._base_dir, "base_dir")

    @property
    def primary(self) -> PostgresServer:
        """The Postgres primary (in the primary region)."""
        return self._require(self._primary, "primary")

    @property
    def replica(self) -> PostgresServer:
        """The Postgres streaming replica (in the replica region)."""
        return self._require(self._replica, "replica")

    @property
    def nats(self) -> dict[str, NatsServer]:
        """The nats-server of each region."""
        if not self._nats:
            raise EmbeddedError("stack not started: no nats servers")
        return self._nats

    @property
    def proxy(self) -> ProxyProcess:
        """The WAN proxy process."""
        return self._require(self._proxy, "proxy")

    @property
    def ports(self) -> StackPorts:
        """Every port in use."""
        return self._require(self._ports, "ports")

    @property
    def keeps_base_dir(self) -> bool:
        """True when :meth:`stop` leaves the base directory in place: it was named by the
        caller, or ``keep=True``."""
        return not self._owns_base_dir or self.keep

    def children(self) -> dict[str, ChildProcess]:
        """Every server process wrapper by name (``pg-syd``, ``nats-lax``, ``proxy``, buses)."""
        found: list[ChildProcess | None] = [
            self._primary, self._replica, *self._nats.values(), self._proxy, *self._buses,
        ]  # fmt: skip
        return {c.name: c for c in found if c is not None}

    def pids(self) -> dict[str, int]:
        """The process id of every running server, by name (see :meth:`children`)."""
        return {
            name: child.pid
            for name, child in self.children().items()
            if child.pid is not None and child.is_running
        }

    @staticmethod
    def _require(value: _T | None, what: str) -> _T:
        if value is None:
            raise EmbeddedError(f"stack not started: no {what}")
        return value

    def _check_region(self, region: str) -> None:
        if region not in self.regions:
            raise EmbeddedError(f"unknown region {region!r}; this stack has {self.regions}")

    def primary_url_from(self, region: str) -> str:
        """DSN of the primary as seen from ``region``: direct in the primary region, else via WAN."""
        self._check_region(region)
        if region == self.primary_region:
            return self.primary.url
        return f"postgresql://postgres@{LOCALHOST}:{self.ports.wan_primary}/postgres?{PINNED}"

    def database_url(self, region: str) -> str:
        """DSN of the local database of ``region``: the primary or the replica."""
        self._check_region(region)
        return self.primary.url if region == self.primary_region else self.replica.url

    def nats_url(self, region: str) -> str:
        """Client URL of the nats-server of ``region``."""
        self._check_region(region)
        return self.nats[region].url

    def env(self, region: str, **extra: str) -> dict[str, str]:
        """Environment of a process running in ``region`` (see :mod:`writebus.client.settings`)."""
        self._check_region(region)
        return region_env(self, region, **extra)

    def describe(self) -> dict[str, Any]:
        """URLs, ports, pids and paths of the running stack, for ``writebus dev up``."""
        return describe(self, watchdog_pid=watchdog().pid)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> Self:
        """Start every server and wait until replication streams and gateways are connected."""
        if self._started:
            return self
        started = time.monotonic()
        self._make_base_dir()
        atexit.register(self._atexit)
        try:
            self._build()
            self.proxy.start(timeout=min(timeout, 10.0))
            # Postgres and NATS do not depend on each other: bring them up side by side (NATS
            # waits ~1 s before dialling gateways; initdb takes about as long).
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stack-start") as pool:
                futures = [
                    pool.submit(self._start_postgres, timeout),
                    pool.submit(self._start_nats, timeout),
                ]
                for future in futures:
                    future.result()
        except BaseException:
            self._started = True  # let stop() clean up whatever did start
            self.stop()
            raise
        self._started = True
        self.startup_seconds = time.monotonic() - started
        log.info(
            "embedded.stack.started",
            base_dir=str(self.base_dir),
            delay_ms=self.one_way_delay_ms,
            seconds=round(self.startup_seconds, 3),
        )
        return self

    def stop(self) -> None:
        """Stop bus processes and servers; remove the base directory unless it is kept (see
        :attr:`keeps_base_dir`); the log event ``embedded.stack.stopped`` says which."""
        if not self._started:
            return
        steps: list[tuple[str, Callable[[], object]]] = [
            (f"bus {bus.name}", bus.stop) for bus in self._buses
        ]
        steps += [(f"nats {s.name}", s.stop) for s in self._nats.values()]
        if self._replica is not None:
            steps.append(("replica", self._replica.stop))
        if self._primary is not None:
            steps.append(("primary", self._primary.stop))
        if self._proxy is not None:
            steps.append(("proxy", self._proxy.stop))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - log it and keep stopping the rest
                log.warning("embedded.stack.stop_failed", what=what, error=repr(exc))
        self._buses.clear()
        self._started = False
        atexit.unregister(self._atexit)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        kept = self.keeps_base_dir
        if self._base_dir is not None and not kept:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            watchdog().keep(self._base_dir)
        log.info("embedded.stack.stopped", base_dir=str(self._base_dir), kept=kept)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _atexit(self) -> None:
        # Last resort when the interpreter exits without stop(): do not leave servers behind.
        self.stop()

    def _make_base_dir(self) -> None:
        if self._requested_base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="writebus-"))
            self._owns_base_dir = True
            if not self.keep:
                # Removed by stop(), or by the watchdog if this process dies first.
                watchdog().remove_on_exit(self._base_dir)
        else:
            self._base_dir = self._requested_base_dir.absolute()
            self._base_dir.mkdir(parents=True, exist_ok=True)
            self._owns_base_dir = False
            self._lock = DirLock(self._base_dir)
            self._lock.acquire()
        # Postgres runs as another user when we are root: it must be able to reach its datadir.
        os.chmod(self._base_dir, 0o755)
        (self._base_dir / "logs").mkdir(exist_ok=True)

    def _choose_ports(self) -> StackPorts:
        """Saved, pinned or fresh ports (see :func:`choose_ports`), checked free and saved."""
        base = self.base_dir
        saved = read_ports(base, self.regions)
        ports = choose_ports(
            regions=self.regions, saved=saved, base_port=self.base_port, fresh=free_ports
        )
        if saved is not None:
            # An earlier run on this directory may still be going away: give it time.
            wait_ports_free(ports.numbers(), timeout=REUSE_WAIT_SECONDS)
        elif self.base_port is not None:
            wait_ports_free(ports.numbers(), timeout=0.0)
        write_ports(base, ports, self.regions)
        return ports

    def _build(self) -> None:
        base = self.base_dir
        p, r = self.regions
        ports = self._ports = self._choose_ports()
        self._proxy = ProxyProcess(
            routes=[
                Route(LOCALHOST, ports.wan_replication, LOCALHOST, ports.pg_primary),
                Route(LOCALHOST, ports.wan_primary, LOCALHOST, ports.pg_primary),
                *(
                    Route(
                        LOCALHOST, ports.wan_gateway[region], LOCALHOST, ports.nats_gateway[region]
                    )
                    for region in self.regions
                ),
            ],
            one_way_delay_ms=self.one_way_delay_ms,
            log_path=base / "logs" / "proxy.log",
        )
        self._primary = PostgresServer(
            name=f"pg-{p}",
            datadir=base / "pg" / p,
            port=ports.pg_primary,
            bindir=self._pg_bindir,
            run_as=self._pg_run_as,
            fsync=self.fsync,
            settings=synchronous_standby_settings(f"pg-{r}") if self.synchronous else None,
        )
        self._replica = PostgresServer(
            name=f"pg-{r}",
            datadir=base / "pg" / r,
            port=ports.pg_replica,
            bindir=self._primary.bindir,
            run_as=self._primary.run_as,
            fsync=self.fsync,
        )
        (base / "pg").mkdir(exist_ok=True)
        os.chmod(base / "pg", 0o755)
        for region in self.regions:
            other = r if region == p else p
            self._nats[region] = NatsServer(
                name=f"nats-{region}",
                region=region,
                client_port=ports.nats_client[region],
                gateway_port=ports.nats_gateway[region],
                monitor_port=ports.nats_monitor[region],
                workdir=base / "nats" / region,
                # Dial the other region through the WAN proxy; tell the others to dial us
                # through the WAN proxy too.
                gateways={other: f"nats://{LOCALHOST}:{ports.wan_gateway[other]}"},
                gateway_advertise=f"{LOCALHOST}:{ports.wan_gateway[region]}",
            )

    def _start_postgres(self, timeout: float) -> None:
        primary, replica = self.primary, self.replica
        upstream = (LOCALHOST, self.ports.wan_replication)
        if primary.is_initialised:
            primary.reuse()
            self.reused = True
        elif primary.has_data:
            raise EmbeddedError(
                f"{primary.datadir} holds an unfinished cluster (initdb was interrupted?): "
                "remove it, or use another directory"
            )
        else:
            primary.init_primary()
        primary.start(timeout=timeout)
        if replica.is_initialised and self.reused:
            replica.reuse(upstream)
        else:
            if replica.has_data:
                # A base backup that never finished, or a copy of a primary that is gone: it
                # is only a copy, so make it again.
                replica.discard()
            replica.init_replica(*upstream)
        replica.start(timeout=timeout)

    def _start_nats(self, timeout: float) -> None:
        for server in self._nats.values():
            server.start(timeout=timeout)
        for server in self._nats.values():
            server.wait_gateways(timeout=timeout)

    # --- helpers ----------------------------------------------------------------------------

    def start_bus(
        self, region: str, *, env: dict[str, str] | None = None, log_name: str | None = None
    ) -> BusProcess:
        """Start a bus service process in ``region`` (not waited for: call ``wait_ready``).

        ``env`` adds to or overrides :meth:`env`. The process is stopped by :meth:`stop`.
        """
        name = log_name or f"bus-{region}-{len(self._buses) + 1}"
        bus = BusProcess(
            # Every node of the stack shares this host: each gets a free HTTP port (logged in
            # its bus.ready line) unless the caller chose one.
            env=self.env(region, **{"WRITEBUS_HTTP_ADDR": "127.0.0.1:0", **(env or {})}),
            log_path=self.base_dir / "logs" / f"{name}.log",
            name=name,
        )
        bus.start()
        self._buses.append(bus)
        return bus

    def wait_replica_caught_up(self, timeout: float = 10.0) -> None:
        """Block until the replica has replayed everything the primary has flushed so far."""
        (target,) = self.primary.execute("SELECT pg_current_wal_flush_lsn()::text")[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.replica.url, autocommit=True, connect_timeout=10) as conn:
            while True:
                row = conn.execute(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)", (target,)
                ).fetchone()
                if row is not None and row[0]:
                    return
                if time.monotonic() >= deadline:
                    raise WaitTimeout(f"replica replay to reach {target}", timeout)
                time.sleep(0.01)
