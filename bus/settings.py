"""The bus node's settings: the client's, plus what only a worker needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from writebus.bus.log import log_level
from writebus.client.errors import ConfigError
from writebus.client.loops import resolve as resolve_loop
from writebus.client.settings import ENV_VARS, EnvReader, Settings

#: Environment variables only the bus service reads, with their meaning.
BUS_ENV_VARS: dict[str, str] = {
    "WRITEBUS_MAX_CONCURRENCY": "writes a bus worker runs at once (default 32)",
    "WRITEBUS_ALLOW_SQL": "'false' switches raw SQL over the bus off: procedures only",
    "WRITEBUS_IDEMPOTENCY_WINDOW": "how long applied request ids are remembered (default 24h)",
    "WRITEBUS_READY_FILE": "file a bus node creates once it serves (for supervisors and tests)",
    "WRITEBUS_LOG_FORMAT": "'json' (default when not a terminal) or 'console'",
    "WRITEBUS_LOG_LEVEL": "log level (default 'info')",
    "WRITEBUS_REQUEST_LOG_LEVEL": "level of the one-line-per-request log (default 'info'; "
    "'debug' hides it at the default log level)",
    "WRITEBUS_GROUP_CONNECTIONS": "connections committing statement writes in groups (default 2)",
    "WRITEBUS_GROUP_MAX": "most statement writes in one group commit (default 64; 1: no grouping)",
    "WRITEBUS_GROUP_ADAPTIVE": "'false' keeps every committer slot open; by default the slots "
    "past the first close while the CPU is busy",
    "WRITEBUS_FENCE_WAIT": "seconds a node on a primary database listens for a newer primary "
    "before serving writes (default 1.5)",
    "WRITEBUS_EVENT_LOOP": "'auto' (uvloop when installed: writebus[speed]), 'uvloop' or "
    "'asyncio'",
    "WRITEBUS_HTTP_ADDR": "host:port of /metrics, /healthz and /readyz (default 0.0.0.0:9091; "
    "'off' disables it)",
}

DEFAULT_HTTP_ADDR = "0.0.0.0:9091"
_OFF = frozenset({"off", "none", "false", "0", "no"})


def parse_http_addr(text: str) -> tuple[str, int] | None:
    """``host:port`` (or ``:port``) as a pair; None for ``off``. ConfigError names the variable."""
    value = text.strip()
    if value.lower() in _OFF:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"WRITEBUS_HTTP_ADDR={text!r}: use host:port, :port or off",
            variable="WRITEBUS_HTTP_ADDR",
        )
    return (host.strip("[]") or "0.0.0.0"), int(port)

#: The shortest and longest ``WRITEBUS_IDEMPOTENCY_WINDOW`` (seconds): shorter, a mistyped
#: unit (``1ms``) would forget writes while their callers still retry them; longer than ten
#: years is no window (and past the dates partitions can be named for).
MIN_IDEMPOTENCY_WINDOW = 60.0
MAX_IDEMPOTENCY_WINDOW = 3650 * 24 * 3600.0


def idempotency_window(seconds: float) -> float:
    """``seconds`` if it is a usable window; else ConfigError naming the variable."""
    if not MIN_IDEMPOTENCY_WINDOW <= seconds <= MAX_IDEMPOTENCY_WINDOW:
        raise ConfigError(
            f"WRITEBUS_IDEMPOTENCY_WINDOW={seconds:g}s: use 1m to 3650 days (default 24h); "
            "a resend is only exactly-once within it",
            variable="WRITEBUS_IDEMPOTENCY_WINDOW",
        )
    return seconds


#: Everything a bus node reads: the client's variables and its own.
ALL_ENV_VARS: dict[str, str] = {**ENV_VARS, **BUS_ENV_VARS}


@dataclass(frozen=True, kw_only=True)
class BusSettings(Settings):
    """Settings of a bus node (``writebus serve``): the client's plus the worker's own."""

    max_concurrency: int = 32
    allow_sql: bool = True
    idempotency_window: float = 24 * 3600.0
    ready_file: str | None = None
    request_log_level: str = "info"
    #: Connections that commit statement writes in groups, and the largest group.
    group_connections: int = 2
    group_max: int = 64
    #: Close the slots past the first while the CPU is busy (:mod:`writebus.bus.cpuload`).
    group_adaptive: bool = True
    #: Seconds a node on a primary database listens for a newer primary before serving writes.
    fence_wait: float = 1.5
    #: Where /metrics, /healthz and /readyz listen; None: no HTTP listener.
    http_addr: tuple[str, int] | None = None
    #: The event loop the service runs on: "uvloop" or "asyncio" (resolved from auto).
    event_loop: str = "asyncio"

    @classmethod
    def _read_env(cls, r: EnvReader) -> dict[str, Any]:
        values = super()._read_env(r)
        values.update(
            max_concurrency=r.integer("WRITEBUS_MAX_CONCURRENCY", 32, minimum=1),
            allow_sql=r.flag("WRITEBUS_ALLOW_SQL", True),
            idempotency_window=idempotency_window(
                r.seconds("WRITEBUS_IDEMPOTENCY_WINDOW", 24 * 3600.0)
            ),
            ready_file=r.optional("WRITEBUS_READY_FILE"),
            request_log_level=r.text("WRITEBUS_REQUEST_LOG_LEVEL", "info"),
            http_addr=parse_http_addr(r.text("WRITEBUS_HTTP_ADDR", DEFAULT_HTTP_ADDR)),
            fence_wait=r.seconds("WRITEBUS_FENCE_WAIT", 1.5, positive=False),
            group_connections=r.integer("WRITEBUS_GROUP_CONNECTIONS", 2, minimum=1),
            group_max=r.integer("WRITEBUS_GROUP_MAX", 64, minimum=1),
            group_adaptive=r.flag("WRITEBUS_GROUP_ADAPTIVE", True),
            event_loop=resolve_loop(r.text("WRITEBUS_EVENT_LOOP", "auto")),
        )
        log_level(values["request_log_level"], "WRITEBUS_REQUEST_LOG_LEVEL")  # validate now
        return values
