"""The bus node's HTTP listener: ``/metrics``, ``/healthz``, ``/readyz`` (aiohttp).

Bound to ``WRITEBUS_HTTP_ADDR`` (default ``0.0.0.0:9091``; ``off`` disables it). Small on
purpose: three read-only endpoints, no state of its own.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from writebus.bus.health import HealthFacts, healthz, readyz
from writebus.bus.listen import listen
from writebus.bus.metrics import Metrics
from writebus.client.errors import ConfigError
from writebus.client.log import get_logger

log = get_logger("writebus.bus.http")

def _float(request: web.Request, name: str) -> float | None:
    """A bound from the query: a finite number not below 0 (``nan`` would pass every check,
    ``1e400`` is no integer), else 400."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise web.HTTPBadRequest(text=f"{name} must be a finite number, 0 or more")
    return value


class HttpServer:
    """Serves the node's metrics and health. ``facts`` is awaited for every health request."""

    def __init__(
        self,
        addr: tuple[str, int],
        *,
        metrics: Metrics,
        facts: Callable[[], Awaitable[HealthFacts]],
    ) -> None:
        self.addr = addr
        self.metrics = metrics
        self.facts = facts
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self.app = app

    def __repr__(self) -> str:
        return f"<HttpServer {self.addr[0]}:{self.port or self.addr[1]}>"

    async def start(self) -> None:
        """Listen (port 0 picks a free one: see :attr:`port`)."""
        try:
            self._runner, self.port = await listen(self.app, self.addr)
        except OSError as exc:
            raise ConfigError(
                f"WRITEBUS_HTTP_ADDR={self.addr[0]}:{self.addr[1]}: cannot listen there "
                f"({exc.strerror or exc}); choose another port, or 'off'",
                variable="WRITEBUS_HTTP_ADDR",
            ) from exc
        log.info("http.listening", host=self.addr[0], port=self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        code, body = healthz(await self.facts())
        return web.json_response(body, status=code)

    async def _readyz(self, request: web.Request) -> web.Response:
        max_lag = _float(request, "max_lag")
        max_bytes = _float(request, "max_lag_bytes")
        code, body = readyz(
            await self.facts(),
            max_lag=max_lag,
            max_lag_bytes=int(max_bytes) if max_bytes is not None else None,
        )
        return web.json_response(body, status=code)
