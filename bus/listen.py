"""Binding an aiohttp application to an address: shared by the bus node's HTTP listener
(:mod:`writebus.bus.http`) and ``writebus dashboard`` (:mod:`writebus.bus.dashboard`)."""

from __future__ import annotations

from aiohttp import web

#: Seconds a connection may sit without a request before it is closed: aiohttp's default
#: (3,630) let anyone reaching an unauthenticated listener hold sockets (file descriptors the
#: node needs for NATS and Postgres) for an hour each. Probes and scrapes take milliseconds.
IDLE_TIMEOUT = 15.0


async def listen(
    app: web.Application, addr: tuple[str, int], *, idle_timeout: float = IDLE_TIMEOUT
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``addr`` (port 0 picks a free one). Returns the runner (clean it up to
    stop) and the port bound. Raises :class:`OSError`, with nothing left running, when the
    address cannot be bound. A connection idle ``idle_timeout`` seconds, before its first
    request or between two, is closed."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout)
    await runner.setup()
    site = web.TCPSite(runner, addr[0], addr[1])
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = getattr(site._server, "sockets", None) or []
    return runner, sockets[0].getsockname()[1] if sockets else addr[1]
