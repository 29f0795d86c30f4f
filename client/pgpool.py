"""Opening psycopg pools that fail fast, typed, with the server's own reason.

``psycopg_pool`` retries a failing connection until its ``open`` timeout and then raises a bare
``PoolTimeout`` ("pool initialization incomplete"), the real cause only in a log line. A wrong
password, database or port deserves better: :func:`open_pool` first makes one connection within
the connect timeout and raises :class:`~writebus.client.errors.ConnectError` carrying what the
server said (``password authentication failed for user "x"``, ``database "y" does not exist``,
``connection refused``), then opens the pool.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from writebus.client.conninfo_secrets import quotes_a_secret, scrub, secrets_of
from writebus.client.errors import ConnectError


def pg_endpoint(conninfo: str) -> str:
    """``host:port/dbname`` of a conninfo string or URL, without credentials (any part of the
    password a misparse put in the host name is masked)."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "(unparsable DATABASE_URL)"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = params.get("dbname")
    return scrub(f"{host}:{port}" + (f"/{dbname}" if dbname else ""), secrets_of(conninfo))


def pg_reason(exc: BaseException, conninfo: str) -> str:
    """The server's (or libpq's) own words for a failed connection to ``conninfo``, on one
    line, without its password."""
    return scrub(_first_line(exc), secrets_of(conninfo))


def connect_error(conninfo: str, exc: BaseException, reason: str | None = None) -> ConnectError:
    """The :class:`ConnectError` for ``conninfo`` failing with ``exc`` (``reason``: our words
    instead of its). Raise it as it is: it names ``exc`` as its cause only when ``exc`` does
    not quote the password, and never shows it as context."""
    secrets = secrets_of(conninfo)
    words = scrub(reason, secrets) if reason is not None else pg_reason(exc, conninfo)
    err = ConnectError("postgres", pg_endpoint(conninfo), words)
    err.__cause__ = None if quotes_a_secret(str(exc), secrets) else exc
    err.__suppress_context__ = True
    return err


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # libpq prefixes 'connection failed: connection to server at "h" (ip), port p failed: '.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    marker = " failed: "
    while marker in reason:
        reason = reason.split(marker, 1)[1]
    if reason.startswith("FATAL:"):
        reason = reason[len("FATAL:") :].strip()
    return reason


async def probe(conninfo: str, *, timeout: float) -> None:
    """Make and close one connection; raise :class:`ConnectError` with the reason."""
    try:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(conninfo, connect_timeout=max(1, math.ceil(timeout))),
            timeout,
        )
    except TimeoutError as exc:
        raise connect_error(  # noqa: B904 -- its cause is chosen by connect_error
            conninfo, exc, f"no answer within {timeout:g}s (WRITEBUS_CONNECT_TIMEOUT)"
        )
    except psycopg.Error as exc:
        raise connect_error(conninfo, exc)  # noqa: B904
    await conn.close()


async def open_pool(
    conninfo: str,
    *,
    name: str,
    min_size: int,
    max_size: int,
    timeout: float,
    configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
) -> AsyncConnectionPool[Any]:
    """An open autocommit pool on ``conninfo``; :class:`ConnectError` within ``timeout``."""
    await probe(conninfo, timeout=timeout)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        configure=configure,
        open=False,
        name=name,
    )
    try:
        await pool.open(wait=True, timeout=timeout)
    except BaseException as exc:
        await pool.close()
        if isinstance(exc, Exception):
            raise connect_error(conninfo, exc, f"pool did not fill: {exc}")  # noqa: B904
        raise
    return pool
