"""Security: procedures-only mode, TLS to NATS and Postgres, credentials kept out of logs.

Besides the session stack this module runs its own small servers, with certificates made by
``trustme`` at run time: a nats-server requiring TLS, a nats-server requiring a password, and a
primary-only Postgres that accepts TLS connections only and a password-authenticated role.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import nats
import psycopg
import pytest
import structlog
import trustme

from tests.support.stack import bus_env, settings_for, start_bus
from tests.support.wire import decode_reply
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.nats import NatsServer
from writebus.bus.embedded.ports import free_port, free_ports
from writebus.bus.embedded.postgres import PostgresServer
from writebus.client import Database, ProtocolError, Settings, WriteBusError
from writebus.client.connect import connect_nats

APP_USER = "app"
BUS_USER = "bus"
#: The secrets of this module's servers. Random, so a match in a log can only be a leak.
DB_SECRET = f"pg-secret-{uuid.uuid4().hex}"
NATS_SECRET = f"nats-secret-{uuid.uuid4().hex}"


# --- servers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    """A test CA and a server certificate for 127.0.0.1/localhost, as files."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path  # for mutual TLS, issued by the same CA
    client_key: Path
    other_ca: Path  # a CA that did not sign the server certificate


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A directory the unprivileged Postgres user can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="writebus-security-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(workdir: Path) -> Certs:
    """A self-signed CA and a server certificate issued by it, made now."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    d = workdir / "certs"
    d.mkdir()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    client = ca.issue_cert("writebus-bus@example.com")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    trustme.CA().cert_pem.write_to_path(str(d / "other-ca.pem"))
    return Certs(
        ca=d / "ca.pem",
        cert=d / "server.pem",
        key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
    )


def _nats_server(workdir: Path, name: str, extra_config: str) -> Iterator[NatsServer]:
    """A standalone nats-server with ``extra_config``, running for the caller's fixture."""
    client, gateway, monitor = free_ports(3)
    server = NatsServer(
        name=name,
        region=name,
        client_port=client,
        gateway_port=gateway,
        monitor_port=monitor,
        workdir=workdir / name,
        extra_config=extra_config,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_nats(workdir: Path, certs: Certs) -> Iterator[NatsServer]:
    """A nats-server that requires TLS on client connections."""
    yield from _nats_server(
        workdir,
        "nats-tls",
        f"tls {{\n  cert_file: {json.dumps(str(certs.cert))}\n"
        f"  key_file: {json.dumps(str(certs.key))}\n  timeout: 2\n}}",
    )


@pytest.fixture(scope="module")
def mtls_nats(workdir: Path, certs: Certs) -> Iterator[NatsServer]:
    """A nats-server that requires TLS and a client certificate issued by the test CA."""
    yield from _nats_server(
        workdir,
        "nats-mtls",
        f"tls {{\n  cert_file: {json.dumps(str(certs.cert))}\n"
        f"  key_file: {json.dumps(str(certs.key))}\n"
        f"  ca_file: {json.dumps(str(certs.ca))}\n  verify: true\n  timeout: 2\n}}",
    )


@pytest.fixture(scope="module")
def auth_nats(workdir: Path) -> Iterator[NatsServer]:
    """A nats-server that requires user ``bus`` with password :data:`NATS_SECRET`."""
    yield from _nats_server(
        workdir,
        "nats-auth",
        f"authorization {{\n  user: {BUS_USER}\n  password: {json.dumps(NATS_SECRET)}\n}}",
    )


@pytest.fixture(scope="module")
def secure_pg(workdir: Path, certs: Certs) -> Iterator[PostgresServer]:
    """A primary-only Postgres accepting TLS connections only: the superuser by trust (to set
    up), role ``app`` by password (:data:`DB_SECRET`)."""
    server = PostgresServer(
        name="pg-secure",
        datadir=workdir / "pg",
        port=free_port(),
        settings={"ssl": True, "ssl_cert_file": "server.pem", "ssl_key_file": "server.key"},
    )
    server.init_primary()
    # The key must be owned by the server's OS user with mode 0600, or Postgres refuses it.
    owner = pwd.getpwnam(server.run_as) if server.run_as and os.geteuid() == 0 else None
    for src, mode in ((certs.cert, 0o644), (certs.key, 0o600)):
        dest = server.datadir / src.name
        shutil.copy(src, dest)
        os.chmod(dest, mode)
        if owner is not None:
            os.chown(dest, owner.pw_uid, owner.pw_gid)
    # No 'host'/'hostnossl' lines: a connection without TLS matches nothing and is refused.
    (server.datadir / "pg_hba.conf").write_text(
        f"hostssl all postgres  127.0.0.1/32 trust\n"
        f"hostssl all {APP_USER} 127.0.0.1/32 scram-sha-256\n"
    )
    server.start()
    server.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{DB_SECRET}'")
    server.execute(f"GRANT ALL ON DATABASE postgres TO {APP_USER}")
    server.execute(f"GRANT ALL ON SCHEMA public TO {APP_USER}")
    try:
        yield server
    finally:
        server.stop()


def secure_url(pg: PostgresServer, certs: Certs, *, password: str = DB_SECRET) -> str:
    """``app``'s URL on the secure server, verifying its certificate and host name."""
    return (
        f"postgresql://{APP_USER}:{password}@127.0.0.1:{pg.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={certs.ca}"
    )


async def _start_bus(stack: Any, region: str, log_name: str, **env: str) -> BusProcess:
    return await asyncio.to_thread(start_bus, stack, region, log_name=log_name, **env)


async def _stop_bus(bus: BusProcess) -> None:
    await asyncio.to_thread(bus.stop, 10)


async def _ask(nc: Any, subject: str, req: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(subject, msgpack.packb(req), timeout=5)
    return decode_reply(msg.data, msg.headers)


def _statements(*sql: str) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "statements": [{"sql": s} for s in sql]}


def _prefix(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:8]}"


# --- procedures-only mode ----------------------------------------------------------------------


async def test_procedures_only_mode_rejects_sql(stack: Any, buses: Any, table: str) -> None:
    """With WRITEBUS_ALLOW_SQL=false the bus refuses raw SQL with a 'forbidden' error saying
    so -- on the wire and as the client's exception -- while procedures keep working."""
    prefix = _prefix("sqloff")
    bus = await _start_bus(
        stack, "syd", f"bus-sqloff-{prefix}", WRITEBUS_ALLOW_SQL="false", WRITEBUS_PREFIX=prefix
    )
    try:
        assert '"allow_sql": false' in bus.log_path.read_text()
        nc = await nats.connect(stack.nats_url("lax"))
        try:
            req = _statements(f"INSERT INTO {table}(body) VALUES ('raw')")
            reply = await _ask(nc, f"{prefix}.write", req)
            assert reply["ok"] is False and reply["id"] == req["id"]
            assert reply["error"]["kind"] == "forbidden"
            assert "procedures-only" in reply["error"]["message"]
            msg = await nc.request(
                f"{prefix}.write",
                json.dumps(req).encode(),
                headers={"Content-Type": "application/json"},
                timeout=5,
            )
            assert json.loads(msg.data)["error"]["kind"] == "forbidden"
        finally:
            await nc.close()
        async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
            with pytest.raises(ProtocolError) as info:
                await db.execute(f"INSERT INTO {table}(body) VALUES ('raw')")
            assert info.value.kind == "forbidden"
            assert "procedures-only" in str(info.value)
            new_id = await db.call("add_note", table, "via-procedure")
            assert await db.fetchval(f"SELECT body FROM {table} WHERE id = %s", [new_id]) == (
                "via-procedure"
            )
        assert await asyncio.to_thread(
            stack.primary.execute, f"SELECT count(*) FROM {table} WHERE body = 'raw'"
        ) == [(0,)]
    finally:
        await _stop_bus(bus)


async def test_a_resend_of_an_applied_write_is_answered_after_raw_sql_was_turned_off(
    stack: Any, buses: Any, table: str
) -> None:
    """A raw-SQL write applied by a node that allowed it, resent under its id to a node that
    no longer does (docs/security.md recommends turning it off): the answer is the stored
    result, duplicate -- "forbidden, nothing applied" was untrue, and a new id would have
    applied it twice. A new request is still refused."""
    rid = uuid.uuid4().hex
    sql = f"INSERT INTO {table}(body) VALUES ('before') RETURNING body"
    async with Database(settings_for(stack, "lax")) as normal:
        first = await normal.execute(sql, request_id=rid)
    prefix = _prefix("sqloff")
    bus = await _start_bus(
        stack, "syd", f"bus-sqloff-{prefix}", WRITEBUS_ALLOW_SQL="false", WRITEBUS_PREFIX=prefix
    )
    try:
        async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
            again = await db.execute(sql, request_id=rid)
            assert again.duplicate and again.rows == first.rows == [("before",)]
            with pytest.raises(ProtocolError) as info:
                await db.execute(sql)
            assert info.value.kind == "forbidden"
    finally:
        await _stop_bus(bus)
    assert await asyncio.to_thread(
        stack.primary.execute, f"SELECT count(*) FROM {table}"
    ) == [(1,)]


# --- TLS to NATS -------------------------------------------------------------------------------


async def test_nats_tls_round_trip(
    stack: Any, buses: Any, tls_nats: NatsServer, certs: Certs, table: str
) -> None:
    """Bus nodes and a client configured with NATS_TLS_CA talk over a TLS-only nats-server:
    a write from lax commits and is read back locally; every connection used TLS."""
    prefix = _prefix("tls")
    env = {"NATS_URL": tls_nats.url, "NATS_TLS_CA": str(certs.ca), "WRITEBUS_PREFIX": prefix}
    nodes = await asyncio.gather(
        _start_bus(stack, "syd", f"bus-tls-syd-{prefix}", **env),
        _start_bus(stack, "lax", f"bus-tls-lax-{prefix}", **env),
    )
    try:
        settings = Settings.from_env({**stack.env("lax"), **env})
        assert settings.nats_tls_ca == str(certs.ca)
        async with Database(settings) as db:
            res = await db.execute(
                f"INSERT INTO {table}(body) VALUES (%s) RETURNING id", ["over-tls"]
            )
            assert res.via_bus and res.replicated
            row = await db.fetchval(f"SELECT body FROM {table} WHERE id = %s", [res.rows[0][0]])
            assert row == "over-tls"
            conns = (await asyncio.to_thread(tls_nats.monitor, "connz"))["connections"]
            assert len(conns) >= 3  # two bus nodes and this client
            assert all(c.get("tls_version") for c in conns), conns
    finally:
        await asyncio.gather(*(_stop_bus(n) for n in nodes))


@pytest.mark.parametrize("ca", ["none", "other"])
async def test_nats_tls_without_the_ca_fails_fast(
    tls_nats: NatsServer, certs: Certs, ca: str
) -> None:
    """A client that does not trust the server's CA (none given, or another CA) cannot
    connect: it fails at once with an error naming NATS_TLS_CA instead of retrying forever."""
    settings = Settings(
        nats_urls=(tls_nats.url,), nats_tls_ca=str(certs.other_ca) if ca == "other" else None
    )
    with pytest.raises(WriteBusError, match="certificate.*NATS_TLS_CA"):
        await asyncio.wait_for(connect_nats(settings, name="untrusting"), 10)


async def test_nats_mutual_tls(mtls_nats: NatsServer, certs: Certs) -> None:
    """With NATS_TLS_CERT/NATS_TLS_KEY the client presents its certificate and a server that
    requires one accepts it; without one the server ends the handshake and the client fails
    at once, naming the settings to check."""
    env = {
        "NATS_URL": mtls_nats.url,
        "NATS_TLS_CA": str(certs.ca),
        "NATS_TLS_CERT": str(certs.client_cert),
        "NATS_TLS_KEY": str(certs.client_key),
    }
    nc = await connect_nats(Settings.from_env(env), name="mtls")
    try:
        await nc.flush()
        assert nc.is_connected
    finally:
        await nc.close()
    no_cert = Settings(nats_urls=(mtls_nats.url,), nats_tls_ca=str(certs.ca))
    with pytest.raises(WriteBusError, match="refused the TLS handshake.*NATS_TLS_CERT"):
        await asyncio.wait_for(connect_nats(no_cert, name="no-client-cert"), 10)


# --- TLS to Postgres ---------------------------------------------------------------------------


async def test_postgres_tls_client_and_bus(
    stack: Any, buses: Any, secure_pg: PostgresServer, certs: Certs
) -> None:
    """With sslmode=verify-full and the test CA in DATABASE_URL, the client's pool and a bus
    node reach a TLS-only Postgres over TLS (pg_stat_ssl says so for their own sessions)."""
    url = secure_url(secure_pg, certs)
    prefix = _prefix("pgtls")
    settings = Settings(
        region="syd",
        primary_region="syd",
        database_url=url,
        nats_urls=(stack.nats_url("syd"),),
        prefix=prefix,
    )
    async with Database(settings) as db:
        await db.execute("CREATE TABLE IF NOT EXISTS tls_notes (body text)")
        res = await db.execute("INSERT INTO tls_notes VALUES ('direct') RETURNING body")
        assert res.rows == [("direct",)]
        assert await db.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    bus = await _start_bus(
        stack,
        "syd",
        f"bus-pgtls-{prefix}",
        DATABASE_URL=url,
        PRIMARY_DATABASE_URL=url,
        WRITEBUS_PREFIX=prefix,
    )
    try:
        nc = await nats.connect(stack.nats_url("lax"))
        try:
            reply = await _ask(
                nc,
                f"{prefix}.write",
                _statements(
                    "INSERT INTO tls_notes VALUES ('via-bus')",
                    "SELECT ssl, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                ),
            )
        finally:
            await nc.close()
        assert reply["ok"] is True, reply
        assert reply["results"][1]["rows"] == [[True, APP_USER]]
    finally:
        await _stop_bus(bus)


def test_postgres_refuses_plaintext_and_untrusted_certificates(
    secure_pg: PostgresServer, certs: Certs
) -> None:
    """The secure server refuses a connection without TLS; a client verifying against another
    CA refuses the server."""
    plain = secure_url(secure_pg, certs).split("?")[0] + "?sslmode=disable"
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(plain, connect_timeout=5).close()
    other = secure_url(secure_pg, certs).replace(str(certs.ca), str(certs.other_ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(other, connect_timeout=5).close()


# --- credentials -------------------------------------------------------------------------------


def _assert_no_secret(text: str, *secrets: str, where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret leaked into {where}:\n{text[-3000:]}"


def _exception_text(exc: BaseException) -> str:
    """Everything an exception shows: message, repr, chained causes, formatted traceback."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


async def _wait_for_log(bus: BusProcess, text: str, timeout: float = 20.0) -> str:
    """The bus log once it contains ``text`` (or the process exited)."""
    deadline = time.monotonic() + timeout
    while True:
        log = bus.log_path.read_text(errors="replace")
        if text in log or not bus.is_running:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {bus.name}'s log:\n{log[-3000:]}")
        await asyncio.sleep(0.05)


def test_settings_repr_hides_credentials() -> None:
    """repr/str of Settings and Database show neither passwords nor URLs that embed them."""
    env = {
        "NATS_URL": f"nats://{BUS_USER}:{NATS_SECRET}@127.0.0.1:4222",
        "NATS_USER": BUS_USER,
        "NATS_PASSWORD": NATS_SECRET,
        "DATABASE_URL": f"postgresql://{APP_USER}:{DB_SECRET}@db:5432/postgres",
        "PRIMARY_DATABASE_URL": f"postgresql://{APP_USER}:{DB_SECRET}@primary:5432/postgres",
    }
    settings = Settings.from_env(env)
    assert settings.nats_password == NATS_SECRET  # read, just not shown
    for text in (repr(settings), str(settings), repr(Database(settings))):
        _assert_no_secret(text, DB_SECRET, NATS_SECRET, where="a repr")


async def test_client_connect_errors_hide_credentials(auth_nats: NatsServer) -> None:
    """A client with a wrong NATS password -- as settings or inside the URL -- gets an error
    saying the credentials were refused, showing neither the password tried nor the real one,
    in the exception or in its log."""
    wrong = f"wrong-{NATS_SECRET}"
    host = auth_nats.url.removeprefix("nats://")
    for settings in (
        Settings(nats_urls=(auth_nats.url,), nats_user=BUS_USER, nats_password=wrong),
        Settings(nats_urls=(f"nats://{BUS_USER}:{wrong}@{host}",)),
    ):
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(WriteBusError, match="refused the credentials") as info:
                await asyncio.wait_for(Database(settings).open(), 10)
        _assert_no_secret(_exception_text(info.value), wrong, where="the client's exception")
        _assert_no_secret(repr(logs), wrong, where="the client's log")


async def test_bus_logs_and_replies_hide_credentials(
    stack: Any,
    buses: Any,
    auth_nats: NatsServer,
    secure_pg: PostgresServer,
    certs: Certs,
) -> None:
    """A bus node holding a NATS password and a database password, run at debug level through
    bad requests, SQL errors and a database outage, never shows either password: not in its
    log, not in the error replies its clients get."""
    prefix = _prefix("creds")
    url = secure_url(secure_pg, certs)
    env = {
        "NATS_URL": auth_nats.url,
        "NATS_USER": BUS_USER,
        "NATS_PASSWORD": NATS_SECRET,
        "DATABASE_URL": url,
        "PRIMARY_DATABASE_URL": url,
        "WRITEBUS_PREFIX": prefix,
        "WRITEBUS_LOG_LEVEL": "debug",
    }
    bus = await _start_bus(stack, "syd", f"bus-creds-{prefix}", **env)
    replies: list[dict[str, Any]] = []
    try:
        nc = await nats.connect(auth_nats.url, user=BUS_USER, password=NATS_SECRET)
        try:
            write = f"{prefix}.write"
            for raw in (b"\xc1garbage", msgpack.packb({"id": "x", "v": 99, "procedure": "p"})):
                msg = await nc.request(write, raw, timeout=5)
                replies.append(decode_reply(msg.data, msg.headers))
            for req in (
                _statements("SELEC 1"),
                _statements("SELECT current_setting('no.such_setting')"),
                {"id": uuid.uuid4().hex, "procedure": "no_such_procedure"},
                {"id": uuid.uuid4().hex, "procedure": "boom"},
            ):
                replies.append(await _ask(nc, write, req))
            assert all(r["ok"] is False for r in replies), replies
            # The database goes away under the running bus: the next write is 'unavailable'.
            await asyncio.to_thread(secure_pg.stop, "immediate")
            try:
                outage = await _ask(nc, write, _statements("SELECT 1"))
                replies.append(outage)
                assert outage["ok"] is False and outage["error"]["kind"] == "unavailable"
                await _wait_for_log(bus, "Connection refused")  # the pool's reconnect attempts
            finally:
                await asyncio.to_thread(secure_pg.start)
        finally:
            await nc.close()
    finally:
        await _stop_bus(bus)
    log = bus.log_path.read_text(errors="replace")
    assert "handler.unavailable" in log  # the outage was logged...
    _assert_no_secret(log, DB_SECRET, NATS_SECRET, where=f"{bus.name}'s log")
    _assert_no_secret(repr(replies), DB_SECRET, NATS_SECRET, where="the error replies")


@pytest.mark.parametrize("failure", ["nats-password", "nats-url", "db-password", "db-down"])
async def test_bus_startup_failures_hide_credentials(
    stack: Any,
    buses: Any,
    auth_nats: NatsServer,
    secure_pg: PostgresServer,
    certs: Certs,
    failure: str,
) -> None:
    """A bus node that cannot start -- NATS refuses its password (given as NATS_PASSWORD or
    inside NATS_URL), the database refuses its password, the database is unreachable -- logs
    why, but not the password it holds."""
    prefix = _prefix("startfail")
    wrong = f"wrong-{uuid.uuid4().hex}"
    host = auth_nats.url.removeprefix("nats://")
    env = {
        "NATS_URL": auth_nats.url,
        "NATS_USER": BUS_USER,
        "NATS_PASSWORD": NATS_SECRET,
        "DATABASE_URL": secure_url(secure_pg, certs),
        "WRITEBUS_PREFIX": prefix,
        "WRITEBUS_LOG_LEVEL": "debug",
    }
    expected = {
        "nats-password": "refused the credentials",
        "nats-url": "refused the credentials",
        "db-password": "password authentication failed",
        "db-down": "Connection refused",
    }[failure]
    if failure == "nats-password":
        env["NATS_PASSWORD"] = wrong
    elif failure == "nats-url":
        env.pop("NATS_USER")
        env.pop("NATS_PASSWORD")
        env["NATS_URL"] = f"nats://{BUS_USER}:{wrong}@{host}"
    elif failure == "db-password":
        env["DATABASE_URL"] = secure_url(secure_pg, certs, password=wrong)
    else:
        env["DATABASE_URL"] = (
            f"postgresql://{APP_USER}:{wrong}@127.0.0.1:{free_port()}/postgres?sslmode=require"
        )
    env["PRIMARY_DATABASE_URL"] = env["DATABASE_URL"]
    bus = stack.start_bus("syd", env=bus_env(stack, "syd", **env), log_name=f"bus-{prefix}")
    try:
        log = await _wait_for_log(bus, expected)
    finally:
        await _stop_bus(bus)
    assert expected in log, log[-3000:]
    _assert_no_secret(log, wrong, NATS_SECRET, DB_SECRET, where=f"{bus.name}'s log")
