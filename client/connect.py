"""Opening NATS connections from :class:`~client.settings.Settings` (auth, TLS, reconnects)."""

from __future__ import annotations

import ssl
from typing import Any

import nats
import structlog

from client.settings import Settings

log = structlog.get_logger("writebus.nats")


def nats_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context when any NATS TLS setting is given, else None."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        ctx.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return ctx


async def connect_nats(settings: Settings, *, name: str, **options: Any) -> Any:
    """Connect to NATS, reconnecting forever, logging state changes without credentials."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", connection=name, error=type(exc).__name__, message=str(exc))

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
    return await nats.connect(**kwargs)
