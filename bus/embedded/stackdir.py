"""A stack's directory between runs: the ports it was started on, and a lock.

``writebus dev up --dir D`` run twice must give the same servers on the same ports, so that an
environment exported from the first run still works: the first run writes ``D/ports.json``, later
runs read it back. ``--base-port N`` pins the ports instead (N, N+1, ... in the order of
:class:`StackPorts`). A lock file keeps two stacks from running on one directory at once; the
kernel releases it when its holder dies, however it dies.

Choosing the ports (:func:`choose_ports`) is a plain function; reading, writing and probing are
the I/O around it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, Final, Protocol, Self

from writebus.bus.embedded.errors import DirectoryInUse, EmbeddedError, PortInUse
from writebus.bus.embedded.ports import LOCALHOST

try:
    import fcntl
except ImportError:  # not POSIX: no lock, one stack per directory is up to the user
    fcntl = None  # type: ignore[assignment]

PORTS_FILE: Final = "ports.json"
LOCK_FILE: Final = "stack.lock"
#: How many ports a stack uses (the fields of :class:`StackPorts`, region maps counting two).
PORT_COUNT: Final = 12
_FORMAT: Final = 1


@dataclass(frozen=True)
class StackPorts:
    """Every port of a stack.

    With a base port N they are, in this order: N Postgres primary, N+1 Postgres replica,
    N+2/N+3 NATS client (primary region, replica region), N+4/N+5 NATS gateway, N+6/N+7 NATS
    monitor, N+8 WAN proxy for streaming replication, N+9 WAN proxy to the primary (direct
    connections from the replica region), N+10/N+11 WAN proxy in front of each gateway.
    """

    pg_primary: int
    pg_replica: int
    nats_client: dict[str, int]
    nats_gateway: dict[str, int]
    nats_monitor: dict[str, int]
    # WAN proxy listen ports
    wan_replication: int  # replica region's Postgres -> primary (streaming replication)
    wan_primary: int  # replica region's clients -> primary (direct, for benchmarks)
    wan_gateway: dict[str, int]  # region -> proxy port in front of that region's gateway

    @classmethod
    def assign(cls, numbers: Sequence[int], regions: tuple[str, str]) -> Self:
        """Hand out ``numbers`` (:data:`PORT_COUNT` of them) in the documented order."""
        if len(numbers) != PORT_COUNT:
            raise ValueError(f"a stack needs {PORT_COUNT} ports, got {len(numbers)}")
        n = iter(numbers)
        p, r = regions
        return cls(
            pg_primary=next(n),
            pg_replica=next(n),
            nats_client={p: next(n), r: next(n)},
            nats_gateway={p: next(n), r: next(n)},
            nats_monitor={p: next(n), r: next(n)},
            wan_replication=next(n),
            wan_primary=next(n),
            wan_gateway={p: next(n), r: next(n)},
        )

    @classmethod
    def from_base(cls, base_port: int, regions: tuple[str, str]) -> Self:
        """``base_port``, ``base_port + 1``, ... (raises ``ValueError`` outside 1..65535)."""
        if not 0 < base_port <= 65536 - PORT_COUNT:
            raise ValueError(
                f"base port {base_port}: ports {base_port}..{base_port + PORT_COUNT - 1} "
                "must lie within 1..65535"
            )
        return cls.assign(range(base_port, base_port + PORT_COUNT), regions)

    def numbers(self) -> list[int]:
        """Every port, in the documented order."""
        out: list[int] = []
        for f in fields(self):
            value = getattr(self, f.name)
            out.extend(value.values() if isinstance(value, dict) else [value])
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (region maps stay maps)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """The inverse of :meth:`to_json`."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = data[f.name]
            values[f.name] = (
                {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else int(raw)
            )
        return cls(**values)


def choose_ports(
    *,
    regions: tuple[str, str],
    saved: StackPorts | None,
    base_port: int | None,
    fresh: Callable[[int], list[int]],
) -> StackPorts:
    """The ports to start a stack on: ``base_port`` when given, else the ``saved`` ones, else
    :data:`PORT_COUNT` ``fresh`` ones. No I/O (``fresh`` is the only call out)."""
    if base_port is not None:
        return StackPorts.from_base(base_port, regions)
    if saved is not None:
        return saved
    return StackPorts.assign(fresh(PORT_COUNT), regions)


def read_ports(base_dir: Path, regions: tuple[str, str]) -> StackPorts | None:
    """The ports saved by an earlier run in ``base_dir``, or ``None`` without a saved file.

    Raises :class:`EmbeddedError` when the file is unreadable or was written for other regions
    (the data directories are named after the regions).
    """
    path = base_dir / PORTS_FILE
    try:
        data = json.loads(path.read_text())
        saved_regions = (str(data["primary_region"]), str(data["replica_region"]))
        ports = StackPorts.from_json(data["ports"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EmbeddedError(f"{path} is not a stack port map ({exc!r}): remove it") from exc
    if saved_regions != regions:
        raise EmbeddedError(
            f"{base_dir} holds a stack for regions {saved_regions}, not {regions}: "
            "use another directory"
        )
    return ports


def write_ports(base_dir: Path, ports: StackPorts, regions: tuple[str, str]) -> Path:
    """Save ``ports`` in ``base_dir`` for the next run (atomically: write, then rename)."""
    path = base_dir / PORTS_FILE
    data = {
        "format": _FORMAT,
        "primary_region": regions[0],
        "replica_region": regions[1],
        "ports": ports.to_json(),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def busy_ports(numbers: Iterable[int], *, host: str = LOCALHOST) -> list[int]:
    """Which of ``numbers`` cannot be listened on right now.

    Probed with ``SO_REUSEADDR``, as the servers bind, so connections of an earlier run lingering
    in TIME_WAIT do not count.
    """
    busy: list[int] = []
    for port in numbers:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(port)
    return busy


def wait_ports_free(numbers: Sequence[int], *, timeout: float, host: str = LOCALHOST) -> None:
    """Wait up to ``timeout`` seconds until every port can be listened on.

    An earlier run's servers may still be shutting down (its watchdog stops them after a hard
    kill). Raises :class:`PortInUse` naming the ports still taken.
    """
    deadline = time.monotonic() + timeout
    while busy := busy_ports(numbers, host=host):
        if time.monotonic() >= deadline:
            raise PortInUse(busy)
        time.sleep(0.05)


class DirLock:
    """An exclusive lock on a stack directory, held from :meth:`acquire` to :meth:`release`.

    Uses ``flock``: the kernel drops it when the holder exits, even on SIGKILL, and children do
    not inherit it. Without ``fcntl`` (not POSIX) it does nothing.
    """

    def __init__(self, base_dir: Path) -> None:
        self.path = base_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def __repr__(self) -> str:
        return f"<DirLock {self.path} held={self._file is not None}>"

    def acquire(self) -> None:
        """Take the lock; raise :class:`DirectoryInUse` if another process holds it."""
        if self._file is not None or fcntl is None:
            return
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise DirectoryInUse(self.path.parent, holder=holder) from exc
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        """Release the lock (the file stays; it is harmless)."""
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


class _Topology(Protocol):
    primary_region: str

    def nats_url(self, region: str) -> str: ...
    def database_url(self, region: str) -> str: ...
    def primary_url_from(self, region: str) -> str: ...


def region_env(stack: _Topology, region: str, **extra: str) -> dict[str, str]:
    """The environment of a process in ``region`` of ``stack`` (see :mod:`writebus.client.settings`)."""
    env = {
        "PRIMARY_REGION": stack.primary_region,
        "FLY_REGION": region,
        "NATS_URL": stack.nats_url(region),
        "DATABASE_URL": stack.database_url(region),
        "PRIMARY_DATABASE_URL": stack.primary_url_from(region),
    }
    env.update({key: str(value) for key, value in extra.items()})
    return env


def describe(stack: Any, *, watchdog_pid: int | None) -> dict[str, Any]:
    """URLs, ports, pids and paths of a running :class:`~writebus.bus.embedded.stack.Stack`."""
    ports = stack.ports
    return {
        "base_dir": str(stack.base_dir),
        "primary_region": stack.primary_region,
        "replica_region": stack.replica_region,
        "one_way_delay_ms": stack.one_way_delay_ms,
        "regions": {
            region: {
                "database_url": stack.database_url(region),
                "primary_database_url": stack.primary_url_from(region),
                "nats_url": stack.nats_url(region),
                "nats_monitor_url": stack.nats[region].monitor_url,
                "nats_gateway_port": ports.nats_gateway[region],
            }
            for region in stack.regions
        },
        "proxy": {
            "pid": stack.proxy.pid,
            "routes": [str(route) for route in stack.proxy.routes],
        },
        "pids": stack.pids(),
        "watchdog_pid": watchdog_pid,
        "ports": ports.to_json(),
        "kept": stack.keeps_base_dir,
        "reused": stack.reused,
        "logs": {
            "primary": str(stack.primary.log_path),
            "replica": str(stack.replica.log_path),
            **{f"nats-{r}": str(stack.nats[r].log_path) for r in stack.regions},
            "proxy": str(stack.proxy.log_path),
        },
    }
