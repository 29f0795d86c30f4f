"""Start-up never hangs: unreachable servers and wrong settings fail fast, typed, with a reason.

NATS: a refused port, an unknown host. Postgres: a refused port, a database or role that does
not exist. Each raises ``ConnectError`` within the connect timeout, naming the endpoint (never
the credentials) and the server's own reason; ``writebus serve`` prints it as one line.
"""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from tests.support.stack import REPO, settings_for
from writebus import ConnectError, Database, SyncDatabase
from writebus.bus.embedded.ports import free_port

LIMIT = 2.0


async def _open_fails(settings: Any) -> ConnectError:
    t0 = time.monotonic()
    with pytest.raises(ConnectError) as info:
        async with Database(settings.replace(connect_timeout=LIMIT)):
            pass
    assert time.monotonic() - t0 < LIMIT + 3.0  # bounded: the timeout, not forever
    return info.value


@pytest.mark.parametrize(
    ("url", "endpoint", "reason"),
    [
        ("nats://127.0.0.1:{port}", "127.0.0.1:{port}", "connection refused"),
        ("nats://no-such-host.invalid:4222", "no-such-host.invalid:4222", "DNS lookup failed"),
        ("nats://app:s3cret@127.0.0.1:{port}", "127.0.0.1:{port}", "connection refused"),
    ],
)
async def test_unreachable_nats_fails_fast_and_typed(
    stack: Any, url: str, endpoint: str, reason: str
) -> None:
    """Database.open() with an unreachable NATS raises ConnectError naming host:port and the
    reason, within the connect timeout; credentials in the URL never appear in it."""
    port = free_port()
    settings = settings_for(stack, "lax", nats_urls=(url.format(port=port),))
    err = await _open_fails(settings)
    assert err.service == "nats" and err.endpoint == endpoint.format(port=port)
    assert reason in err.reason and "s3cret" not in str(err)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("port", "Connection refused"),
        ("dbname", 'database "no_such_db" does not exist'),
        ("user", 'role "no_such_role" does not exist'),
    ],
)
async def test_postgres_failures_carry_the_servers_reason(
    stack: Any, change: str, reason: str
) -> None:
    """A wrong port, database or role raises ConnectError with what Postgres (or the network)
    said -- not psycopg_pool's bare PoolTimeout after its own timeout."""
    base = stack.replica.url  # its settings kept (PostgresServer.url)
    urls = {
        "port": make_conninfo(base, port=str(free_port())),
        "dbname": make_conninfo(base, dbname="no_such_db"),
        "user": make_conninfo(base, user="no_such_role"),
    }
    settings = settings_for(stack, "lax", database_url=urls[change])
    err = await _open_fails(settings)
    assert err.service == "postgres" and reason.lower() in err.reason.lower()


@pytest.mark.parametrize(
    ("url", "secret", "reason"),
    [
        ("postgresql://app:50%secret@127.0.0.1/app", "50%secret", "invalid percent-encoded"),
        ("postgresql://app:pa@ss7word@127.0.0.1:{port}/app", "ss7word", "resolve host"),
    ],
)
async def test_a_malformed_database_url_keeps_its_password_out_of_the_error(
    stack: Any, url: str, secret: str, reason: str
) -> None:
    """libpq quotes a password it cannot parse, and an unescaped '@' makes the password's tail
    the host name: the ConnectError masks it -- in its text, its repr, and its traceback,
    which leaves out libpq's own error -- for the async and the sync API alike."""
    settings = settings_for(stack, "lax", database_url=url.format(port=free_port()))
    errors = [await _open_fails(settings)]
    with pytest.raises(ConnectError) as info:
        SyncDatabase(settings.replace(connect_timeout=LIMIT)).open()
    errors.append(info.value)
    for err in errors:
        shown = "".join(traceback.format_exception(err)) + repr(err)
        assert reason in err.reason and "***" in str(err)
        assert secret not in shown and secret.replace("%", "") not in shown


def test_serve_with_unreachable_nats_is_one_line_exit_2(stack: Any) -> None:
    """`writebus serve` with NATS unreachable exits 2 within the connect timeout, printing one
    line that names the endpoint and the reason; no traceback."""
    port = free_port()
    env = {**stack.env("syd"), "NATS_URL": f"nats://127.0.0.1:{port}",
           "WRITEBUS_CONNECT_TIMEOUT": "1", "PATH": "/usr/bin:/bin"}
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "writebus", "serve"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2, out.stderr
    assert time.monotonic() - t0 < 10
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "refused" in lines[0]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DATABASE_URL": "", "PRIMARY_DATABASE_URL": ""}, "DATABASE_URL"),
        ({"WRITEBUS_PROCEDURES": "no_such_pkg.procs:procedures"}, "no module named 'no_such_pkg'"),
        ({"WRITEBUS_PROCEDURES": "tests.procedures:nothing_here"}, "has no 'nothing_here'"),
        ({"WRITEBUS_ALLOW_SQL": "flase"}, "WRITEBUS_ALLOW_SQL='flase' is not a boolean"),
        ({"WRITEBUS_MAX_CONCURRENCY": "lots"}, "WRITEBUS_MAX_CONCURRENCY"),
        ({"WRITEBUS_LOG_FORMAT": "xml"}, "WRITEBUS_LOG_FORMAT"),
        ({"WRITEBUS_PROCEDURES": ":procedures"}, "package.module:attribute"),
        ({"WRITEBUS_PROCEDURES": ".procs:procedures"}, "package.module:attribute"),
        ({"NATS_TLS_CA": str(REPO / "README.md")}, "README.md': not PEM certificates"),
        ({"NATS_TLS_CA": str(REPO / "docs")}, "docs': no such readable file"),
        ({"NATS_TLS_CERT": str(REPO / "README.md"), "NATS_TLS_KEY": str(REPO / "README.md")},
         "not a PEM certificate and its private key"),
        ({"WRITEBUS_IDEMPOTENCY_WINDOW": "1ms"}, "WRITEBUS_IDEMPOTENCY_WINDOW=0.001s"),
        ({"WRITEBUS_IDEMPOTENCY_WINDOW": "20000000h"}, "use 1m to 3650 days"),
        ({"NATS_USER": "", "NATS_PASSWORD": "secret"}, "NATS_PASSWORD is set without NATS_USER"),
    ],
)
def test_serve_reports_a_configuration_mistake_in_one_line(
    stack: Any, env: dict[str, str], says: str
) -> None:
    """Each configuration mistake makes `writebus serve` print one line naming the problem and
    exit 2 -- never a traceback, never a running node with a wrong setting."""
    full = {**stack.env("syd"), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **env}
    out = subprocess.run(
        [sys.executable, "-m", "writebus", "serve"],
        env=full, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], out.stderr
    assert "Traceback" not in out.stderr


async def test_libpq_variables_reach_the_local_database(stack: Any) -> None:
    """With DATABASE_URL unset, PGHOST/PGPORT/PGUSER/PGDATABASE name the local database."""
    from writebus import Settings

    host, port = stack.replica.host, stack.replica.port
    env = {k: v for k, v in stack.env("lax").items() if k not in ("DATABASE_URL",
                                                                   "PRIMARY_DATABASE_URL")}
    env.update(PGHOST=host, PGPORT=str(port), PGUSER="postgres", PGDATABASE="postgres")
    async with Database(Settings.from_env(env)) as db:
        assert await db.fetchval("SELECT pg_is_in_recovery()") is True


def test_serve_shows_a_mistyped_variable_before_failing(stack: Any) -> None:
    """A WRITEBUS_* variable nothing reads is a warning in `writebus serve`'s output: it was
    logged before the output was set up, and lost, so WRITEBUS_ALOW_SQL=false left raw SQL
    on without a word."""
    env = {**stack.env("syd"), "NATS_URL": f"nats://127.0.0.1:{free_port()}",
           "WRITEBUS_CONNECT_TIMEOUT": "1", "WRITEBUS_ALOW_SQL": "false",
           "WRITEBUS_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "writebus", "serve"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "WRITEBUS_ALOW_SQL is not a writebus setting" in out.stderr
    assert "did you mean WRITEBUS_ALLOW_SQL?" in out.stderr and "Traceback" not in out.stderr
