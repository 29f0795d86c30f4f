"""Logging: a quiet library, a service that says what it does.

* The client prints nothing unless the application configures logging, and then only through
  the application's configuration (named ``writebus.*`` loggers).
* A clean close is not reported as a disconnection.
* ``writebus serve`` logs one line per served request (never parameters), and in JSON mode every
  line is JSON -- psycopg_pool's warnings included.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from typing import Any

import psycopg
import pytest

from tests.support.stack import REPO, settings_for, start_bus
from writebus import Database, WriteRejectedError

APP = """
import asyncio, logging, sys
{config}
from writebus import Database, Settings

async def main():
    env = {env!r}
    async with Database(Settings.from_env(env)) as db:
        await db.execute("INSERT INTO {table}(body) VALUES ('quiet')")
        await db.fetch("SELECT 1")
    Settings.from_env({{**env, "WRITEBUS_ALOW_SQL": "false"}})  # a typo: one warning

asyncio.run(main())
"""


def _run_app(stack: Any, table: str, config: str) -> subprocess.CompletedProcess[str]:
    code = APP.format(config=config, env=stack.env("lax"), table=table)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )


def test_the_library_prints_nothing_without_logging_configured(
    stack: Any, buses: Any, table: str
) -> None:
    """An app that configures no logging sees nothing from writebus on stdout or stderr --
    not even the typo warning (the writebus logger has a NullHandler)."""
    out = _run_app(stack, table, "")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""


def test_the_apps_logging_config_rules_writebus_output(
    stack: Any, buses: Any, table: str
) -> None:
    """With logging.basicConfig(level=WARNING) writebus writes nothing to stdout, and to stderr
    only its warnings, in the app's own format, under writebus.* logger names."""
    out = _run_app(stack, table, "logging.basicConfig(level=logging.WARNING)")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "WARNING:writebus.client.settings:WRITEBUS_ALOW_SQL is not a writebus setting and is "
        "ignored; did you mean WRITEBUS_ALLOW_SQL?"
    ]


async def test_a_clean_close_is_not_a_disconnection(
    stack: Any, buses: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening and closing a Database logs no nats.disconnected (it used to, every time)."""
    with caplog.at_level(logging.DEBUG, logger="writebus"):
        async with Database(settings_for(stack, "lax")) as db:
            await db.fetch("SELECT 1")
    events = [getattr(r, "writebus", {}).get("event") for r in caplog.records]
    assert "nats.disconnected" not in events and "nats.error" not in events


async def test_serve_logs_each_request_as_json_and_never_the_parameters(
    stack: Any, table: str
) -> None:
    """A bus node in JSON mode writes one JSON line per served request with its id, subject,
    statement count, outcome, SQLSTATE, timings and LSN -- and never a parameter value; every
    line of its output is JSON, including psycopg_pool's warning about a broken connection."""
    prefix = f"log{uuid.uuid4().hex[:8]}"
    bus = start_bus(stack, "syd", log_name=f"bus-{prefix}", WRITEBUS_PREFIX=prefix,
                    WRITEBUS_LOG_FORMAT="json")
    try:
        secret = f"SECRET-PARAM-{uuid.uuid4().hex}"
        async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
            ok = await db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [secret],
                                  request_id=f"{prefix}-ok")
            with pytest.raises(WriteRejectedError):
                await db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [secret],
                                 request_id=f"{prefix}-dup")
            with psycopg.connect(stack.primary.url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                    "AND application_name = ''"
                )
            await db.execute(f"INSERT INTO {table}(body) VALUES ('after-cut')",
                             request_id=f"{prefix}-cut")
    finally:
        bus.stop(10)
    text = bus.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    requests = {e["request_id"]: e for e in lines if e.get("event") == "request"}
    assert requests[f"{prefix}-ok"]["outcome"] == "ok"
    assert requests[f"{prefix}-ok"]["lsn"] == ok.lsn_text
    assert requests[f"{prefix}-ok"]["statements"] == 1
    assert requests[f"{prefix}-ok"]["subject"] == f"{prefix}.write"
    assert {"queue_ms", "run_ms", "origin", "sqlstate"} <= set(requests[f"{prefix}-ok"])
    assert requests[f"{prefix}-dup"]["outcome"] == "rejected"
    assert requests[f"{prefix}-dup"]["sqlstate"] == "23505"
    assert secret not in text
    assert any(e.get("logger", "").startswith("psycopg") for e in lines), text[-3000:]
