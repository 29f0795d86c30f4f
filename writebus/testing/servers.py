"""Databases for tests: an embedded Postgres started once, and a fresh schema per test.

:func:`embedded_postgres` runs a single local Postgres (:class:`PostgresServer`, fsync off) in a
temporary directory, for :class:`~writebus.testing.FakeBus`. :func:`scoped_schema` creates a
schema and returns a conninfo whose ``search_path`` starts with it, so tables a test creates are
its own and vanish with it, while tables created beforehand in ``public`` stay visible.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: Points :class:`~writebus.testing.FakeBus` fixtures at your own database instead of an
#: embedded one (a primary you may create and drop schemas in).
FAKE_DATABASE_URL_VAR = "WRITEBUS_FAKE_DATABASE_URL"


@contextlib.contextmanager
def embedded_postgres(*, name: str = "pg-fake", timeout: float = 60.0) -> Iterator[str]:
    """Start a Postgres primary in a temporary directory; yield its URL; stop and remove it.

    Needs the ``embedded`` extra (or the system's Postgres server binaries); as root, Postgres
    runs as an unprivileged user (``WRITEBUS_PG_USER``). If this process dies first, the
    watchdog stops the server and removes the directory.
    """
    from writebus.bus.embedded.ports import free_port
    from writebus.bus.embedded.postgres import PostgresServer
    from writebus.bus.embedded.watchdog import watchdog

    base = Path(tempfile.mkdtemp(prefix="writebus-fake-"))
    watchdog().remove_on_exit(base)
    # Postgres may run as another user (when we are root): it must reach its data directory.
    os.chmod(base, 0o755)
    server = PostgresServer(name=name, datadir=base / "pg", port=free_port(), fsync=False)
    try:
        server.init_primary()
        server.start(timeout=timeout)
        yield server.url
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def with_search_path(conninfo: str, schema: str) -> str:
    """``conninfo`` whose sessions look up names in ``schema`` first, then ``public``; any
    ``options`` it had are kept."""
    params = conninfo_to_dict(conninfo)
    options = str(params.pop("options", "") or "")
    setting = f"-c search_path={schema},public"
    return make_conninfo(**params, options=f"{options} {setting}".strip())  # type: ignore[arg-type]


@contextlib.contextmanager
def scoped_schema(conninfo: str, *, prefix: str = "writebus_test") -> Iterator[str]:
    """Create a fresh schema; yield a conninfo that creates tables in it (see
    :func:`with_search_path`); drop it, and everything in it, afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    ident = sql.Identifier(schema)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
    try:
        yield with_search_path(conninfo, schema)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
