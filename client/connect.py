"""Opening NATS connections from :class:`~writebus.client.settings.Settings`, and sharing them.

The first connection is bounded by ``settings.connect_timeout``: an unreachable server, a
misspelled host, refused credentials or an untrusted certificate raise
:class:`~writebus.client.errors.ConnectError` naming the endpoint (``host:port``, never
credentials) and the reason. Once connected, nats-py reconnects forever.

One connection per process serves a :class:`~writebus.client.db.Database` and the region's
tracker: :func:`acquire_nats` hands out a shared, reference-counted connection per server set,
credentials and event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client as NATS

from writebus.client.denials import denials_of, refused_publish
from writebus.client.errors import ConfigError, ConnectError
from writebus.client.log import get_logger
from writebus.client.loops import loop_lock
from writebus.client.pongs import guard_pongs
from writebus.client.settings import Settings
from writebus.client.settings_checks import tls_context
from writebus.client.transport import NatsClient

log = get_logger("writebus.client.nats")

#: Seconds between the client's PINGs, and how many may go unanswered: a server that stops
#: answering (stalled, or a network that drops packets without a reset) is given up within
#: about 3 x 5 s and the next one tried. nats-py's 120 s and 2 kept a dead connection
#: "connected" for 4 to 6 minutes, every request on it ending "unknown" after its whole budget.
PING_INTERVAL = 5
MAX_OUTSTANDING_PINGS = 2


def nats_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context when any NATS TLS setting is given, else None (:func:`tls_context`)."""
    return tls_context(settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key)


def endpoints(urls: tuple[str, ...] | list[str]) -> str:
    """``host:port`` of each server URL, credentials stripped (for messages and logs)."""
    out = []
    for url in urls:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        try:
            port = parts.port or 4222
        except ValueError:
            port = 4222
        out.append(f"{parts.hostname or '?'}:{port}")
    return ", ".join(out)


def refused_for_good(exc: BaseException) -> str | None:
    """Why retrying a connection cannot help -- bad credentials, an untrusted certificate --
    or None when it may (the server is down or starting)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate was not accepted ({exc.verify_message}): check NATS_TLS_CA"
    if isinstance(exc, ssl.SSLError) and "ALERT" in (exc.reason or ""):
        # The server ended the handshake: typically mutual TLS without an acceptable client
        # certificate (TLSV13_ALERT_CERTIFICATE_REQUIRED, TLSV1_ALERT_UNKNOWN_CA).
        return f"it refused the TLS handshake ({exc.reason}): check NATS_TLS_CERT and NATS_TLS_KEY"
    if isinstance(exc, nats.errors.AuthorizationError) or (
        "authorization violation" in str(exc).lower()
    ):
        return (
            "it refused the credentials (Authorization Violation): "
            "check NATS_USER/NATS_PASSWORD or NATS_CREDS"
        )
    return None


def describe_failure(exc: BaseException | None) -> str:
    """A short reason for a failed connection attempt, in words an operator can act on."""
    if exc is None:
        return "no answer"
    reason = refused_for_good(exc)
    if reason is not None:
        return reason
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed ({exc.strerror or exc}): check the host name in NATS_URL"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is nats-server running there?"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, nats.errors.TimeoutError)):
        return "no answer (timed out)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def connect_nats(
    settings: Settings, *, name: str, timeout: float | None = None, **options: Any
) -> NatsClient:
    """Connect to NATS within ``timeout`` (default ``settings.connect_timeout``), then
    reconnect forever, logging state changes without credentials.

    Raises :class:`~writebus.client.errors.ConnectError` at once when the server refuses the
    credentials or its certificate, and after ``timeout`` when it cannot be reached.
    """
    limit = settings.connect_timeout if timeout is None else timeout
    where = endpoints(settings.nats_urls)
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[tuple[str, BaseException]] = loop.create_future()
    last_error: list[BaseException] = []
    # While reconnecting nats-py reports every failed dial (4 a second): log the first only.
    quiet = [False]
    nc = NATS()
    guard_pongs(nc)

    async def on_error(exc: Exception) -> None:
        last_error[:] = [exc]
        if (subject := refused_publish(exc)) is not None:
            denials_of(nc).refused(subject)  # its requests end now, not at their timeout
        reason = refused_for_good(exc)
        if reason is not None and not refused.done():
            refused.set_result((reason, exc))
        if (nc.is_connected or nc.is_reconnecting) and not quiet[0]:
            quiet[0] = nc.is_reconnecting
            log.warning("nats.error", connection=name, error=type(exc).__name__, message=str(exc))

    async def on_disconnect() -> None:
        if not nc.is_closed:  # a close() we asked for is not news
            log.warning("nats.disconnected", connection=name, servers=where)

    async def on_reconnect() -> None:
        quiet[0] = False
        log.info("nats.reconnected", connection=name, servers=where)

    kwargs: dict[str, Any] = dict(
        servers=list(settings.nats_urls),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=max(0.1, min(2.0, limit)),
        ping_interval=PING_INTERVAL,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    if settings.nats_user:
        kwargs["user"] = settings.nats_user
        kwargs["password"] = settings.nats_password or ""
    if settings.nats_creds:
        if importlib.util.find_spec("nkeys") is None:  # nats-py signs with it, on connect
            raise ConfigError(
                "NATS_CREDS needs the nkeys package, which is not installed: "
                "pip install 'writebus[creds]'",
                variable="NATS_CREDS",
            )
        kwargs["user_credentials"] = settings.nats_creds
    tls = nats_tls_context(settings)
    if tls is not None:
        kwargs["tls"] = tls
    kwargs.update(options)
    connecting = asyncio.create_task(nc.connect(**kwargs), name=f"nats-connect-{name}")
    cancelled = True
    try:
        waiting: set[asyncio.Future[Any]] = {connecting, refused}
        await asyncio.wait(waiting, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        cancelled = False
    finally:
        if cancelled or not connecting.done():  # cancelled: even one made in the same pass
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await nc.close()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        return nc
    if refused.done():
        reason, exc = refused.result()
        raise ConnectError("nats", where, reason) from exc
    failure: BaseException | None = None
    if connecting.done() and not connecting.cancelled():
        failure = connecting.exception()
    cause = last_error[0] if last_error else failure
    reason = describe_failure(cause)
    if not connecting.done() or connecting.cancelled():
        reason = f"{reason} (gave up after {limit:g}s: WRITEBUS_CONNECT_TIMEOUT)"
    raise ConnectError("nats", where, reason) from cause


# -- one shared connection per process --------------------------------------------------------

_shared: dict[tuple[Any, ...], tuple[NatsClient, int]] = {}
_locks: dict[int, asyncio.Lock] = {}


def _key(settings: Settings) -> tuple[Any, ...]:
    return (
        settings.nats_urls,
        settings.nats_user,
        settings.nats_password,
        settings.nats_creds,
        settings.nats_tls_ca,
        settings.nats_tls_cert,
        settings.nats_tls_key,
        id(asyncio.get_running_loop()),
    )


def _lock() -> asyncio.Lock:
    return loop_lock(_locks)


async def acquire_nats(settings: Settings, *, name: str = "writebus") -> NatsClient:
    """The process's NATS connection for these servers and credentials, opened on first use."""
    async with _lock():
        key = _key(settings)
        entry = _shared.get(key)
        if entry is not None and not entry[0].is_closed:
            _shared[key] = (entry[0], entry[1] + 1)
            return entry[0]
        nc = await connect_nats(settings, name=name)
        _shared[key] = (nc, 1)
        return nc


async def release_nats(nc: NatsClient) -> None:
    """Give back a connection from :func:`acquire_nats`; the last release closes it."""
    async with _lock():
        for key, (shared, refs) in list(_shared.items()):
            if shared is nc:
                if refs > 1:
                    _shared[key] = (shared, refs - 1)
                    return
                del _shared[key]
                break
    with contextlib.suppress(Exception):
        await nc.close()
