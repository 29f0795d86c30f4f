"""The test stack on Docker through testcontainers (used where a Docker engine answers).

Same interface as :class:`bus.embedded.stack.Stack`, so every test runs on either: a Postgres 15
primary and a streaming replica (``pg_basebackup``) in containers, a ``nats`` container per region
joined by a gateway, on one Docker network; host ports are fixed at start so that a container
stopped and started again keeps its address. Bus nodes run as local processes, as in production
they are separate from the servers. The WAN proxy runs on the host in front of the lax→primary
direct route; links inside the Docker network (replication, gateway) are not delayed.

Not exercised on machines without a Docker engine (the default backend there is ``local``).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import psycopg
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.environ import PINNED
from writebus.bus.embedded.ports import LOCALHOST, free_ports, wait_port
from writebus.bus.embedded.proxy import ProxyProcess, Route
from writebus.bus.embedded.stack import region_env

PG_IMAGE = "postgres:15"
NATS_IMAGE = "nats:2.10"
_PG_FLAGS = (
    "-c wal_level=replica -c max_wal_senders=10 -c hot_standby=on -c fsync=off "
    "-c max_connections=300 -c wal_retrieve_retry_interval=100ms"
)
_HBA = "host all all all trust\nhost replication all all trust\n"


class _Server:
    """A container that keeps its host port across stop/start."""

    def __init__(self, container: DockerContainer, port: int, url: str) -> None:
        self.container = container
        self.port = port
        self.url = url

    @property
    def is_running(self) -> bool:
        c = self.container.get_wrapped_container()
        c.reload()
        return bool(c.status == "running")

    def start(self, *, timeout: float = 60.0) -> None:
        if self.container.get_wrapped_container() is None:
            self.container.start()
        else:
            self.container.get_wrapped_container().start()
        wait_port(self.port, timeout=timeout)
        if self.url.startswith("postgresql"):
            _wait_pg(self.url, timeout)

    def stop(self, mode: str = "fast", *, timeout: float = 30.0) -> None:
        self.container.get_wrapped_container().stop(timeout=int(timeout))

    def kill(self) -> None:
        self.container.get_wrapped_container().kill()

    def restart(self, *, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout=timeout)

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []


def _wait_pg(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class ContainerStack:
    """Two regions in Docker containers; see the module docstring."""

    def __init__(self, *, one_way_delay_ms: float = 0.0, primary_region: str = "syd",
                 replica_region: str = "lax") -> None:
        self.one_way_delay_ms = one_way_delay_ms
        self.primary_region = primary_region
        self.replica_region = replica_region
        self.regions = (primary_region, replica_region)
        self.base_dir = Path(mkdtemp(prefix="writebus-docker-"))
        self._tag = uuid.uuid4().hex[:8]
        self.network: Network | None = None
        self.nats: dict[str, _Server] = {}
        self.proxy: ProxyProcess | None = None

    def start(self) -> ContainerStack:
        pg_p, pg_r, n_syd, n_lax, wan = free_ports(5, host=LOCALHOST)
        self.network = Network()
        self.network.create()
        primary_alias = f"pg-primary-{self._tag}"
        primary = (
            DockerContainer(PG_IMAGE)
            .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
            .with_bind_ports(5432, pg_p)
            .with_network(self.network)
            .with_network_aliases(primary_alias)
            .with_command(f"postgres {_PG_FLAGS}")
        )
        url = f"postgresql://postgres@{LOCALHOST}:{pg_p}/postgres?{PINNED}"
        self.primary = _Server(primary, pg_p, url)
        self.primary.start()
        primary.exec(["bash", "-c", f"printf '{_HBA}' >> /var/lib/postgresql/data/pg_hba.conf"])
        self.primary.execute("SELECT pg_reload_conf()")
        replica = (
            DockerContainer(PG_IMAGE)
            .with_bind_ports(5432, pg_r)
            .with_network(self.network)
            .with_kwargs(user="postgres", entrypoint=["bash", "-c"])
            .with_command(
                [
                    "set -e; D=/var/lib/postgresql/data/pgdata; "
                    f"[ -s $D/PG_VERSION ] || pg_basebackup -h {primary_alias} -U postgres "
                    "-D $D -R -X stream -d 'application_name=pg-lax'; chmod 700 $D; "
                    f"exec postgres -D $D {_PG_FLAGS}"
                ]
            )
        )
        url = f"postgresql://postgres@{LOCALHOST}:{pg_r}/postgres?{PINNED}"
        self.replica = _Server(replica, pg_r, url)
        self.replica.start()
        for region, port, peer in ((self.primary_region, n_syd, self.replica_region),
                                   (self.replica_region, n_lax, self.primary_region)):
            conf = (
                f"port: 4222\nserver_name: nats-{region}\n"
                f"gateway {{ name: {region}, port: 7222, gateways: [ "
                f"{{ name: {peer}, url: \"nats://nats-{peer}-{self._tag}:7222\" }} ] }}\n"
            )
            path = self.base_dir / f"nats-{region}.conf"
            path.write_text(conf)
            c = (
                DockerContainer(NATS_IMAGE)
                .with_bind_ports(4222, port)
                .with_network(self.network)
                .with_network_aliases(f"nats-{region}-{self._tag}")
                .with_volume_mapping(str(path), "/etc/nats/nats.conf", "ro")
                .with_command("-c /etc/nats/nats.conf")
            )
            self.nats[region] = _Server(c, port, f"nats://{LOCALHOST}:{port}")
            self.nats[region].start()
        self._wan_port = wan
        self.proxy = ProxyProcess(
            routes=[Route(LOCALHOST, wan, LOCALHOST, pg_p)],
            one_way_delay_ms=self.one_way_delay_ms,
            log_path=self.base_dir / "proxy.log",
        )
        self.proxy.start()
        self.wait_replica_caught_up(60)
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for server in [*self.nats.values(), getattr(self, "replica", None),
                       getattr(self, "primary", None)]:
            if server is not None:
                try:
                    server.container.stop()
                except Exception:
                    pass
        if self.network is not None:
            self.network.remove()

    def primary_url_from(self, region: str) -> str:
        if region == self.primary_region:
            return self.primary.url
        return f"postgresql://postgres@{LOCALHOST}:{self._wan_port}/postgres?{PINNED}"

    def database_url(self, region: str) -> str:
        return self.primary.url if region == self.primary_region else self.replica.url

    def nats_url(self, region: str) -> str:
        return self.nats[region].url

    def env(self, region: str, **extra: str) -> dict[str, str]:
        return region_env(self, region, **extra)

    def start_bus(self, region: str, *, env: dict[str, str] | None = None,
                  log_name: str | None = None) -> BusProcess:
        bus = BusProcess(env=env or self.env(region),
                         log_path=self.base_dir / f"{log_name or 'bus-' + region}.log",
                         name=log_name or f"bus-{region}")
        return bus.start()

    def wait_replica_caught_up(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        target = self.primary.execute("SELECT pg_current_wal_flush_lsn()")[0][0]
        while True:
            rows = self.replica.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [str(target)]
            )
            if rows and rows[0][0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("replica did not catch up")
            time.sleep(0.05)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "docker",
            "regions": {r: {"database_url": self.database_url(r), "nats_url": self.nats_url(r)}
                        for r in self.regions},
        }
