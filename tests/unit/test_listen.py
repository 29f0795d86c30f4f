"""Binding aiohttp listeners (:mod:`writebus.bus.listen`): a free port is found, and a port in
use is one clear configuration error for the bus node's HTTP listener."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from aiohttp import web

from writebus.bus.http import HttpServer
from writebus.bus.listen import listen
from writebus.bus.metrics import Metrics
from writebus.client.errors import ConfigError


async def _get(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    return await asyncio.to_thread(get)  # the server runs on this loop


async def _facts() -> object:
    raise AssertionError("not asked in these tests")


async def _here(request: web.Request) -> web.Response:
    return web.Response(text="here")


async def test_port_zero_binds_a_free_port_and_serves() -> None:
    app = web.Application()
    app.router.add_get("/", _here)
    runner, port = await listen(app, ("127.0.0.1", 0))
    try:
        assert port > 0
        assert await _get(f"http://127.0.0.1:{port}/") == "here"
    finally:
        await runner.cleanup()


async def test_a_port_in_use_is_a_config_error_naming_the_setting() -> None:
    """The node's listener on a taken port: ConfigError for WRITEBUS_HTTP_ADDR with the system's
    reason, nothing left listening; the listener holding the port keeps serving."""
    first = HttpServer(("127.0.0.1", 0), metrics=Metrics("syd"), facts=_facts)  # type: ignore[arg-type]
    await first.start()
    try:
        assert first.port is not None
        second = HttpServer(("127.0.0.1", first.port), metrics=Metrics("syd"), facts=_facts)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=f"WRITEBUS_HTTP_ADDR=127.0.0.1:{first.port}: "
                           "cannot listen there") as info:
            await second.start()
        assert info.value.variable == "WRITEBUS_HTTP_ADDR"
        assert second.port is None and second._runner is None
        assert "writebus_requests" in await _get(f"http://127.0.0.1:{first.port}/metrics")
    finally:
        await first.stop()


async def test_a_connection_that_sends_no_request_is_closed() -> None:
    """A client that connects and sends nothing (or trickles a request that never ends) is
    cut off after the idle timeout: aiohttp's default held it for an hour."""
    app = web.Application()
    app.router.add_get("/", _here)
    runner, port = await listen(app, ("127.0.0.1", 0), idle_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers that never end
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
    finally:
        await runner.cleanup()
