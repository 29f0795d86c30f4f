"""Local servers for two simulated regions: Postgres, nats-server, a WAN delay proxy.

Used by ``writebus demo``, ``writebus dev up``, the tests and the benchmarks.
"""

from bus.embedded.bus_process import BusProcess
from bus.embedded.errors import (
    BinaryNotFound,
    CommandError,
    EmbeddedError,
    ServerStartError,
    WaitTimeout,
)
from bus.embedded.nats import NatsServer, find_nats_server
from bus.embedded.pgbin import find_pg_bindir
from bus.embedded.postgres import PostgresServer
from bus.embedded.proxy import DelayProxy, ProxyProcess, Route
from bus.embedded.stack import Stack

__all__ = [
    "BinaryNotFound",
    "BusProcess",
    "CommandError",
    "DelayProxy",
    "EmbeddedError",
    "NatsServer",
    "PostgresServer",
    "ProxyProcess",
    "Route",
    "ServerStartError",
    "Stack",
    "WaitTimeout",
    "find_nats_server",
    "find_pg_bindir",
]
