"""Local servers for two simulated regions: Postgres, nats-server, a WAN delay proxy.

Used by ``writebus demo``, ``writebus dev up``, the tests and the benchmarks. Every server runs
in its own process group under a watchdog (:mod:`writebus.bus.embedded.watchdog`), so none
outlives the process that started it.
"""

from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.errors import (
    BinaryNotFound,
    CommandError,
    DirectoryInUse,
    EmbeddedError,
    PortInUse,
    ServerStartError,
    WaitTimeout,
)
from writebus.bus.embedded.nats import NatsServer, find_nats_server
from writebus.bus.embedded.pgbin import find_pg_bindir
from writebus.bus.embedded.postgres import PostgresServer
from writebus.bus.embedded.proxy import DelayProxy, ProxyProcess, Route
from writebus.bus.embedded.stack import Stack
from writebus.bus.embedded.stackdir import StackPorts
from writebus.bus.embedded.watchdog import Watchdog, watchdog

__all__ = [
    "BinaryNotFound",
    "BusProcess",
    "CommandError",
    "DelayProxy",
    "DirectoryInUse",
    "EmbeddedError",
    "NatsServer",
    "PortInUse",
    "PostgresServer",
    "ProxyProcess",
    "Route",
    "ServerStartError",
    "Stack",
    "StackPorts",
    "WaitTimeout",
    "Watchdog",
    "find_nats_server",
    "find_pg_bindir",
    "watchdog",
]
