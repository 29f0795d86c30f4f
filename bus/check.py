"""``writebus check``: is this node configured right? The I/O half.

:func:`gather` connects to NATS and the local database at the same time, then -- while NATS is
up -- pings the bus in the primary region and listens to ``<prefix>.lsn.>`` for a bounded window.
Every step has its own time limit, so the command never hangs: with NATS down it fails within
the connect timeout and the checks that need NATS are reported as skipped. What it found goes
into :class:`~writebus.bus.checklist.Facts`; the verdicts are pure functions in
:mod:`writebus.bus.checklist`, the output is :mod:`writebus.bus.checkreport`.

The check uses the same code paths as the app: :func:`~writebus.client.connect.connect_nats`
(its typed reason), :func:`~writebus.client.pgpool.probe` (the server's own words) and
:func:`~writebus.client.rpc.request` for the ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import psycopg

from writebus.bus.checklist import (
    Broadcast,
    Config,
    DatabaseFacts,
    Facts,
    Limits,
    PingFacts,
)
from writebus.bus.checkreport import Report
from writebus.bus.settings import BUS_ENV_VARS, BusSettings
from writebus.bus.verdicts import evaluate, settings_failed
from writebus.client.connect import connect_nats, endpoints
from writebus.client.errors import ConfigError, ConnectError, NoWorkerError, WriteBusError
from writebus.client.pgpool import pg_endpoint, pg_reason, probe
from writebus.client.procedures import PING
from writebus.client.protocol import LsnUpdate, Request, decode, encoding_of, update_lsn
from writebus.client.retry import RetryPolicy
from writebus.client.rpc import request
from writebus.client.settings import Settings, known_variables, unknown_variables
from writebus.client.subjects import Subjects
from writebus.client.transport import NatsClient
from writebus.client.version import VERSION

_DATABASE_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() "
    "THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END, "
    "current_setting('server_version')"
)


async def database_facts(settings: Settings, *, timeout: float) -> DatabaseFacts:
    """Reach the local database as the app would, then ask its recovery state and replay age."""
    url = settings.database_url
    if not url:
        return DatabaseFacts(endpoint="")
    where = pg_endpoint(url)
    try:
        await probe(url, timeout=timeout)
    except ConnectError as exc:
        return DatabaseFacts(endpoint=where, error=exc.reason)
    try:
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=max(1, math.ceil(timeout))
            )
            try:
                cur = await conn.execute(_DATABASE_SQL)
                row = await cur.fetchone()
            finally:
                await conn.close()
    except TimeoutError:
        return DatabaseFacts(endpoint=where, error=f"no answer within {timeout:g}s")
    except psycopg.Error as exc:
        return DatabaseFacts(endpoint=where, error=pg_reason(exc, url))
    assert row is not None
    return DatabaseFacts(
        endpoint=where,
        in_recovery=bool(row[0]),
        replay_age=None if row[1] is None else max(0.0, float(row[1])),
        server_version=str(row[2]).split(" ")[0],  # "15.18 (Debian 15.18-0+deb12u1)"
    )


async def ping_primary(nc: NatsClient, settings: Settings, *, timeout: float) -> PingFacts:
    """Ask a bus node in the primary region who it is (``writebus.ping``: no write)."""
    subject = Subjects(settings.prefix).rpc(settings.primary_region)
    req = Request(id=f"check-{uuid.uuid4().hex}", procedure=PING, origin=settings.region)
    start = time.monotonic()
    try:
        exchange = await request(
            nc, subject, req, timeout=timeout, policy=RetryPolicy(), region=settings.primary_region
        )
    except NoWorkerError:
        return PingFacts(subject=subject, error="no bus node subscribed (no responders)")
    except WriteBusError as exc:
        return PingFacts(subject=subject, error=str(exc))
    value = exchange.reply.value
    if not isinstance(value, Mapping):
        return PingFacts(subject=subject, error=f"unexpected answer {value!r}")
    return PingFacts(subject=subject, info=dict(value), rtt_ms=(time.monotonic() - start) * 1000)


async def listen(nc: NatsClient, prefix: str, *, seconds: float) -> tuple[Broadcast, ...]:
    """Every progress broadcast heard on ``<prefix>.lsn.>`` for ``seconds``."""
    heard: list[Broadcast] = []

    async def on_msg(msg: Any) -> None:
        try:
            upd = decode(msg.data, LsnUpdate, encoding_of(msg.headers, msg.data))
            lsn = update_lsn(upd)
        except WriteBusError:
            return  # not a progress broadcast: nothing to learn from it
        heard.append(
            Broadcast(
                region=upd.region,
                replica_id=upd.replica_id,
                role=upd.role,
                lsn=lsn,
                at=time.monotonic(),
            )
        )

    sub = await nc.subscribe(Subjects(prefix).lsn_all, cb=on_msg)
    try:
        # The window is the point: broadcasts come once per heartbeat, so listen for a few.
        await asyncio.sleep(seconds)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return tuple(heard)


async def _nats_facts(
    settings: Settings, *, timeout: float, seconds: float
) -> tuple[str | None, PingFacts | None, tuple[Broadcast, ...] | None]:
    try:
        nc = await connect_nats(settings, name=f"writebus-check-{settings.region}", timeout=timeout)
    except ConnectError as exc:
        return exc.reason, None, None
    try:
        async with asyncio.TaskGroup() as tg:
            heard = tg.create_task(listen(nc, settings.prefix, seconds=seconds), name="check-listen")
            ping = tg.create_task(ping_primary(nc, settings, timeout=timeout), name="check-ping")
        return None, ping.result(), heard.result()
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def gather(
    settings: Settings, env: Mapping[str, str], *, listen_seconds: float, timeout: float
) -> Facts:
    """Gather every fact the checklist judges. Takes at most about ``2 * timeout +
    listen_seconds``; never raises for an unreachable server."""
    async with asyncio.TaskGroup() as tg:
        db = tg.create_task(database_facts(settings, timeout=timeout), name="check-database")
        bus = tg.create_task(
            _nats_facts(settings, timeout=timeout, seconds=listen_seconds), name="check-nats"
        )
    nats_error, ping, heard = bus.result()
    known = known_variables() | frozenset(BUS_ENV_VARS)
    return Facts(
        config=Config.from_env(
            env,
            region=settings.region,
            primary_region=settings.primary_region,
            prefix=settings.prefix,
            replica_id=settings.replica_id,
        ),
        nats_endpoint=endpoints(settings.nats_urls),
        nats_error=nats_error,
        database=db.result(),
        ping=ping,
        heard=heard,
        listen=listen_seconds,
        version=VERSION,
        unknown_vars=tuple(unknown_variables(env, known)),
    )


async def run_check(
    env: Mapping[str, str] | None = None,
    *,
    listen_seconds: float = 2.5,
    timeout: float | None = None,
    limits: Limits | None = None,
) -> Report:
    """Check the node configured by ``env`` (default: this process's environment).

    ``timeout`` bounds each server's answer (default ``WRITEBUS_CONNECT_TIMEOUT``); broadcasts
    are listened to for ``listen_seconds``. Malformed settings are reported as a failed check,
    not raised.
    """
    environ = os.environ if env is None else env
    try:
        # A bus node's own settings too: WRITEBUS_ALLOW_SQL=flase passed here, and serve
        # then refused to start. An app's environment leaves them unset (the defaults).
        settings: Settings = BusSettings.from_env(environ)
    except ConfigError as exc:
        fix = (
            f"give {exc.variable} a valid value (`writebus serve --help` lists the settings)"
            if exc.variable
            else "correct the environment"
        )
        return Report(checks=tuple(settings_failed(str(exc), fix)))
    limit = settings.connect_timeout if timeout is None else timeout
    facts = await gather(settings, environ, listen_seconds=listen_seconds, timeout=limit)
    if timeout is not None and facts.nats_error is not None:
        # connect_nats names the setting it took its limit from; here it was --timeout.
        facts = _replace_nats_error(facts, "WRITEBUS_CONNECT_TIMEOUT", "--timeout")
    return Report(
        checks=tuple(evaluate(facts, limits)),
        region=settings.region,
        primary_region=settings.primary_region,
        prefix=settings.prefix,
    )


def _replace_nats_error(facts: Facts, old: str, new: str) -> Facts:
    assert facts.nats_error is not None
    return replace(facts, nats_error=facts.nats_error.replace(old, new))


def main(
    *,
    listen_seconds: float,
    timeout: float | None,
    limits: Limits,
    as_json: bool,
) -> int:
    """Run the check in this process's environment, print the report, return the exit code."""
    report = asyncio.run(run_check(listen_seconds=listen_seconds, timeout=timeout, limits=limits))
    if as_json:
        print(report.to_json())
    else:
        print(report.render(encoding=sys.stdout.encoding))
    return report.exit_code
