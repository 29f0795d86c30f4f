"""The README's tour runs as written: every Python block, in order, as one script in lax.

The bus nodes run the README's own procedures block (tests/readme_procedures.py). The tour's
tables live in a schema of their own (``search_path`` in the URLs), so its plain names --
``notes``, ``users`` -- cannot meet another test's.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests.support.docblocks import python_blocks, run_blocks
from tests.support.stack import REPO, start_bus
from writebus import Database, SyncDatabase

README = REPO / "README.md"
SCHEMA = "readme_tour"
PREFIX = "readme"
TABLES = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
SET search_path = {SCHEMA};
CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);
CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
INSERT INTO accounts VALUES (1, 100), (2, 0);
CREATE TABLE counters (n int NOT NULL);
INSERT INTO counters VALUES (0);
CREATE TABLE orders (id int PRIMARY KEY, total int NOT NULL);
"""


def _in_schema(url: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-c search_path={SCHEMA}')}"


def _env(stack: Any, region: str) -> dict[str, str]:
    env = stack.env(region, WRITEBUS_PREFIX=PREFIX)
    for key in ("DATABASE_URL", "PRIMARY_DATABASE_URL"):
        if key in env:
            env[key] = _in_schema(env[key])
    return env


@pytest.fixture(scope="module")
def readme_buses(stack: Any) -> Iterator[None]:
    """Bus nodes in both regions on their own prefix, running the README's procedures."""
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute(TABLES)
    stack.wait_replica_caught_up(10)
    procs = []
    try:
        for region in ("syd", "lax"):
            env = _env(stack, region)
            procs.append(start_bus(stack, region, log_name=f"bus-readme-{region}",
                                   WRITEBUS_PROCEDURES="tests.readme_procedures:procedures",
                                   **env))  # fmt: skip
        yield
    finally:
        for p in procs:
            p.stop(10)


async def test_every_python_block_of_the_readme_runs(
    stack: Any, readme_buses: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tour -- procedures, the async API, the sync API, SQLAlchemy Core, tokens and reads,
    an unknown outcome settled by its id -- runs in lax against real servers, and did what it
    says on the primary."""
    blocks = python_blocks(README)
    assert len(blocks) >= 6
    for key, value in _env(stack, "lax").items():
        monkeypatch.setenv(key, value)
    module = types.ModuleType("readme_tour")
    try:
        await run_blocks(README, blocks, module)
    finally:
        db = module.__dict__.get("db")
        if isinstance(db, Database):
            await db.close()
    ns = module.__dict__
    assert isinstance(ns["sdb"], SyncDatabase) and ns["again"].duplicate
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute(f"SET search_path = {SCHEMA}")
        bodies = {r[0] for r in conn.execute("SELECT body FROM notes").fetchall()}
        balances = conn.execute("SELECT balance FROM accounts ORDER BY id").fetchall()
        users = conn.execute("SELECT name FROM users").fetchall()
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()
    assert {"hello", "from a thread", "from Core", "token"} <= bodies
    assert balances == [(90,), (10,)] and users == [("ada",)] and orders == (1,)
