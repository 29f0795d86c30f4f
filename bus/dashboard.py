"""``writebus dashboard``: one live web page of a deployment, served over HTTP (aiohttp).

The command subscribes to the progress and status subjects with a
:class:`~writebus.bus.watch.Watch` -- what the ``dashboard`` NATS role may read -- and serves:

* ``/``: the page (:mod:`writebus.bus.dashboard_page`: plain HTML, CSS and JavaScript in one
  string; no CDN, no build step). It draws each region's lag on a ``<canvas>``, keeping a few
  minutes of history in the browser, and shows the same table as ``writebus top``.
* ``/events``: Server-Sent Events, one ``data: {json}`` event about once a second per open page,
  the JSON being :meth:`Snapshot.as_dict() <writebus.bus.watch.Snapshot.as_dict>` unchanged.
  The browser's ``EventSource`` reconnects by itself when the command restarts.
* ``/snapshot.json``: the same JSON once, for scripts and ``curl``.

Each open page gets its own stream that takes a snapshot when it is due: a snapshot is a pure
read of what the watch has heard, so there is no shared ticker to start or stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

from aiohttp import web

from writebus.bus.dashboard_page import PAGE
from writebus.bus.listen import listen
from writebus.bus.watch import Snapshot, Watch, finite
from writebus.client.connect import connect_nats
from writebus.client.log import get_logger
from writebus.client.settings import Settings

log = get_logger("writebus.bus.dashboard")

DEFAULT_LISTEN = "127.0.0.1:8080"
#: Seconds between two events on one stream (the bus nodes publish status once a second).
DEFAULT_INTERVAL = 1.0
#: How long the browser waits before reconnecting a dropped stream (the SSE ``retry`` field).
RECONNECT_MS = 2000


class ListenError(Exception):
    """The page cannot be served on the address asked for (in use, or not this machine's)."""

    def __init__(self, addr: tuple[str, int], reason: str) -> None:
        super().__init__(f"cannot listen on {addr[0]}:{addr[1]}: {reason}")
        self.addr = addr
        self.reason = reason


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (on 127.0.0.1) or ``[v6]:port`` as a pair; port 0 picks a free
    port. Raises :class:`argparse.ArgumentTypeError` (argparse reports it as a usage error)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: use host:port, e.g. {DEFAULT_LISTEN}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def page_url(host: str, port: int) -> str:
    """The address to open in a browser for a listener on ``host:port`` (a wildcard address
    is shown as the loopback one, which always reaches it from this machine)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def sse_event(data: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying ``data`` as JSON on a single ``data:`` line.

    ``json.dumps`` escapes newlines inside strings, so a value can never end the event early. A
    NaN from a malformed broadcast (msgpack can carry one) is sent as null: the browser's
    ``JSON.parse`` would reject the whole event otherwise."""
    text = json.dumps(finite(data), separators=(",", ":"), allow_nan=False)
    return f"data: {text}\n\n".encode()


def render_page(*, prefix: str) -> str:
    """The page, with the subject prefix it watches in its title."""
    return PAGE.replace("{{prefix}}", html.escape(prefix))


class DashboardServer:
    """Serves the page and the event stream of ``snapshot`` on ``addr`` (port 0: a free one).

    ``stop()`` ends every open stream first, so shutting down never waits on a browser.
    """

    def __init__(
        self,
        addr: tuple[str, int],
        *,
        snapshot: Callable[[], Snapshot],
        prefix: str = "writebus",
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.addr = addr
        self.snapshot = snapshot
        self.interval = interval
        self.page = render_page(prefix=prefix)
        self.port: int | None = None
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/events", self._events)
        app.router.add_get("/snapshot.json", self._snapshot_json)
        self.app = app

    def __repr__(self) -> str:
        return f"<DashboardServer {self.addr[0]}:{self.port or self.addr[1]}>"

    @property
    def url(self) -> str:
        """The page's address (after :meth:`start`)."""
        return page_url(self.addr[0], self.port if self.port is not None else self.addr[1])

    async def start(self) -> None:
        """Listen (port 0 picks a free one: see :attr:`port`); :class:`ListenError` when the
        address cannot be bound."""
        self._closing.clear()
        try:
            self._runner, self.port = await listen(self.app, self.addr)
        except OSError as exc:
            raise ListenError(self.addr, exc.strerror or str(exc)) from exc
        log.info("dashboard.listening", url=self.url)

    async def stop(self) -> None:
        """End the open streams, then stop listening."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def _snapshot_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot().as_dict())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # a reverse proxy must not hold events back
            }
        )
        await resp.prepare(request)
        try:
            await resp.write(f"retry: {RECONNECT_MS}\n\n".encode())
            while not self._closing.is_set():
                await resp.write(sse_event(self.snapshot().as_dict()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.interval)
        except ConnectionError:
            pass  # the page was closed: nothing to clean up
        return resp


async def run_dashboard(
    settings: Settings,
    addr: tuple[str, int],
    *,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Connect to NATS, watch the deployment and serve the page until SIGINT/SIGTERM (or
    ``stop``). Prints the page's URL on ``out`` (stdout) once it listens."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    nc = await connect_nats(settings, name="writebus-dashboard")
    watch = Watch(nc, prefix=settings.prefix)
    server = DashboardServer(addr, snapshot=watch.snapshot, prefix=settings.prefix)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop by draining, not by a traceback
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await watch.start()
        await server.start()
        print(server.url, file=out or sys.stdout, flush=True)
        await stop.wait()
    finally:
        await server.stop()
        await watch.stop()
        with contextlib.suppress(Exception):
            await nc.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0
