"""The writebus pytest plugin: registered through the ``pytest11`` entry point, so installing
``writebus[testing]`` is all it takes. See docs/testing.md.

Fixtures:

* ``writebus_stack`` (session) -- the embedded two-region stack with a bus node per region
  (:class:`~writebus.testing.stack.WritebusStack`), started on first use;
* ``writebus_db`` -- ``db = await writebus_db("lax")``: an open :class:`~writebus.Database` in
  a region of that stack (default: the replica region), closed after the test;
  ``writebus_sync_db`` is the same for :class:`~writebus.SyncDatabase`;
* ``writebus_fake`` -- an open :class:`~writebus.testing.FakeBus` on a fresh schema of one
  local Postgres, dropped after the test; ``writebus_sync_fake`` its
  :class:`~writebus.testing.SyncFakeBus` twin;
* ``writebus_fake_database_url`` (session) -- that Postgres: ``$WRITEBUS_FAKE_DATABASE_URL``,
  else an embedded server started once;
* ``writebus_procedures`` (session) -- the ``module:attribute`` of the procedures registry the
  bus nodes and fakes serve: the ``writebus_procedures`` ini option, else
  ``$WRITEBUS_PROCEDURES``, else none. Override the fixture to choose in code.

Ini options: ``writebus_procedures``, ``writebus_prefix`` (default ``writebus``) and
``writebus_delay_ms`` (the stack's one-way WAN delay, default 5). The test session's rootdir
is put first on the bus nodes' ``PYTHONPATH`` and, when procedures are configured, on this
process's ``sys.path``, so a procedures module at the top of the project is found by both.

This module needs only pytest and the base install at import time: pytest loads it wherever
writebus is installed, with or without the ``testing`` extra (the servers' packages,
pytest-asyncio); a fixture that needs what is missing fails when used.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

import pytest

from writebus.client.db import Database
from writebus.client.sync import SyncDatabase
from writebus.testing.fake import FakeBus, SyncFakeBus
from writebus.testing.servers import FAKE_DATABASE_URL_VAR, embedded_postgres, scoped_schema
from writebus.testing.stack import WritebusStack, start_stack

_F = TypeVar("_F", bound=Callable[..., Any])
_fixture: Any
try:
    import pytest_asyncio

    _fixture = pytest_asyncio.fixture
except ImportError:  # the `testing` extra brings it; without it async fixtures cannot run
    _fixture = pytest.fixture


def _async_fixture(fn: _F) -> _F:
    """pytest-asyncio's fixture decorator when installed, else pytest's."""
    return cast(_F, _fixture(fn))


class DatabaseFactory(Protocol):
    """``await writebus_db(region, **options)``: an open Database in ``region``."""

    async def __call__(self, region: str | None = None, **options: Any) -> Database: ...


class SyncDatabaseFactory(Protocol):
    """``writebus_sync_db(region, **options)``: an open SyncDatabase in ``region``."""

    def __call__(self, region: str | None = None, **options: Any) -> SyncDatabase: ...


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the plugin's ini options."""
    parser.addini(
        "writebus_procedures",
        "module:attribute of the writebus.Procedures the test stack and fakes serve "
        "(default: $WRITEBUS_PROCEDURES)",
        default="",
    )
    parser.addini("writebus_prefix", "subject prefix of the test stack", default="writebus")
    parser.addini(
        "writebus_delay_ms", "one-way WAN delay of the test stack in milliseconds", default="5"
    )


def procedures_spec(config: pytest.Config) -> str:
    """The configured procedures registry (ini option, else environment), or ``""``."""
    value = str(config.getini("writebus_procedures") or "").strip()
    return value or os.environ.get("WRITEBUS_PROCEDURES", "").strip()


def pytest_configure(config: pytest.Config) -> None:
    """Make a procedures module at the top of the project importable here, as it is on the
    bus nodes."""
    root = str(config.rootpath)
    if procedures_spec(config) and root not in sys.path:
        sys.path.insert(0, root)


@pytest.fixture(scope="session")
def writebus_procedures(pytestconfig: pytest.Config) -> str:
    """The ``module:attribute`` of the procedures served by the stack and the fakes."""
    return procedures_spec(pytestconfig)


@pytest.fixture(scope="session")
def writebus_stack(
    pytestconfig: pytest.Config, writebus_procedures: str
) -> Iterator[WritebusStack]:
    """The embedded two-region stack (primary ``syd``, replica ``lax``) with a bus node per
    region, started once per session."""
    started = start_stack(
        procedures=writebus_procedures,
        prefix=str(pytestconfig.getini("writebus_prefix") or "writebus"),
        one_way_delay_ms=float(pytestconfig.getini("writebus_delay_ms") or 0),
        pythonpath=[str(pytestconfig.rootpath)],
    )
    try:
        yield started
    finally:
        started.stack.stop()


@_async_fixture
async def writebus_db(writebus_stack: WritebusStack) -> AsyncIterator[DatabaseFactory]:
    """A factory of open Databases on ``writebus_stack``: ``await writebus_db("lax")``.
    Keywords go to :class:`~writebus.Database`. Each is closed after the test."""
    opened: list[Database] = []

    async def open_database(region: str | None = None, **options: Any) -> Database:
        db = Database(writebus_stack.settings(region or writebus_stack.replica_region), **options)
        await db.open()
        opened.append(db)
        return db

    try:
        yield open_database
    finally:
        for db in reversed(opened):
            await db.close()


@pytest.fixture
def writebus_sync_db(writebus_stack: WritebusStack) -> Iterator[SyncDatabaseFactory]:
    """A factory of open SyncDatabases on ``writebus_stack``: ``writebus_sync_db("lax")``.
    Keywords go to :class:`~writebus.SyncDatabase`. Each is closed after the test."""
    opened: list[SyncDatabase] = []

    def open_database(region: str | None = None, **options: Any) -> SyncDatabase:
        settings = writebus_stack.settings(region or writebus_stack.replica_region)
        db = SyncDatabase(settings, **options)
        db.open()
        opened.append(db)
        return db

    try:
        yield open_database
    finally:
        for db in reversed(opened):
            db.close()


@pytest.fixture(scope="session")
def writebus_fake_database_url() -> Iterator[str]:
    """The Postgres the fakes run on: ``$WRITEBUS_FAKE_DATABASE_URL``, else an embedded server
    started once per session."""
    url = os.environ.get(FAKE_DATABASE_URL_VAR, "").strip()
    if url:
        yield url
        return
    with embedded_postgres() as embedded:
        yield embedded


@_async_fixture
async def writebus_fake(
    writebus_fake_database_url: str, writebus_procedures: str
) -> AsyncIterator[FakeBus]:
    """An open :class:`~writebus.testing.FakeBus` whose tables live in a fresh schema (names
    in ``public`` stay visible), dropped after the test with the exactly-once records of its
    request ids (:meth:`~writebus.testing.FakeBus.forget_requests`)."""
    with scoped_schema(writebus_fake_database_url) as url:
        async with FakeBus(url, procedures=writebus_procedures or None) as fake:
            try:
                yield fake
            finally:
                await fake.forget_requests()


@pytest.fixture
def writebus_sync_fake(
    writebus_fake_database_url: str, writebus_procedures: str
) -> Iterator[SyncFakeBus]:
    """An open :class:`~writebus.testing.SyncFakeBus` on a fresh schema (as ``writebus_fake``)."""
    with scoped_schema(writebus_fake_database_url) as url:
        with SyncFakeBus(url, procedures=writebus_procedures or None) as fake:
            try:
                yield fake
            finally:
                fake.forget_requests()
