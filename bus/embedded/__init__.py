"""Local servers for two simulated regions: Postgres, nats-server, a WAN delay proxy.

Used by ``writebus demo``, ``writebus dev up``, the tests and the benchmarks.
"""

from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.errors import (
    BinaryNotFound,
    CommandError,
    EmbeddedError,
    ServerStartError,
    WaitTimeout,
)
from writebus.bus.embedded.nats import NatsServer, find_nats_server
from writebus.bus.embedded.pgbin import find_pg_bindir
from writebus.bus.embedded.postgres import PostgresServer
from writebus.bus.embedded.proxy import DelayProxy, ProxyProcess, Route
from writebus.bus.embedded.stack import Stack

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
