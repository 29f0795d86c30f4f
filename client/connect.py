"""Opening NATS connections from :class:`~writebus.client.settings.Settings` (auth, TLS, reconnects)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NATS

from writebus.client.errors import WriteBusError
from writebus.client.settings import Settings

log = structlog.get_logger("writebus.nats")


def nats_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context when any NATS TLS setting is given, else None."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        ctx.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return ctx


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


async def connect_nats(settings: Settings, *, name: str, **options: Any) -> Any:
    """Connect to NATS, reconnecting forever, logging state changes without credentials.

    The first connection is retried while the server is unreachable, but fails at once with
    :class:`~writebus.client.errors.WriteBusError` when the server refuses the credentials or its
    certificate is not trusted: retrying would only hang.
    """
    refused: asyncio.Future[tuple[str, BaseException]] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", connection=name, error=type(exc).__name__, message=str(exc))
        reason = refused_for_good(exc)
        if reason is not None and not refused.done():
            refused.set_result((reason, exc))

    async def on_disconnect() -> None:
        log.info("nats.disconnected", connection=name)

    async def on_reconnect() -> None:
        log.info("nats.reconnected", connection=name)

    kwargs: dict[str, Any] = dict(
        servers=list(settings.nats_urls),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    if settings.nats_user:
        kwargs["user"] = settings.nats_user
        kwargs["password"] = settings.nats_password or ""
    if settings.nats_creds:
        kwargs["user_credentials"] = settings.nats_creds
    tls = nats_tls_context(settings)
    if tls is not None:
        kwargs["tls"] = tls
    kwargs.update(options)
    nc = NATS()
    connecting = asyncio.create_task(nc.connect(**kwargs), name=f"nats-connect-{name}")
    try:
        either: set[asyncio.Future[Any]] = {connecting, refused}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await nc.close()
    if not connecting.cancelled() and connecting.exception() is None:
        return nc
    if refused.done():
        reason, exc = refused.result()
        raise WriteBusError(f"cannot connect to NATS: {reason}") from exc
    connecting.result()  # re-raise the connection's own error
    raise AssertionError("unreachable")
