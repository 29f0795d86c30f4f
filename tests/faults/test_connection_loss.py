"""Connections to the primary cut under a write: the write still succeeds, and applies once.

The small, deterministic form of the primary-restart scenario. Postgres ends a session
(``pg_terminate_backend``: SQLSTATE 57P01, as in a fast shutdown) either while it is idle in a
pool -- the pool finds out on next use -- or in the middle of a statement. Either must read as
"connection lost, nothing applied, retry", never as a rejected write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.faults.conftest import Rig
from tests.support.stack import bus_env
from writebus.bus.embedded.proxy import DelayProxy
from writebus.client import Database
from writebus.client.errors import Outcome, OutcomeUnknownError, WriteBusError
from writebus.client.procedures import Procedures

procedures = Procedures()


@procedures.register
async def put_key(conn: Any, table: str, key: str) -> None:
    """Insert ``key`` into a rig's table (a procedure's exactly-once claim)."""
    await conn.execute(f"INSERT INTO {table}(key, region) VALUES (%s, 'proc')", [key])


def _terminate_client_backends(primary_url: str) -> int:
    """End every client session on the primary but this one; return how many."""
    with psycopg.connect(primary_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _terminate_running(primary_url: str, marker: str, timeout: float = 10.0) -> None:
    """Wait until a statement containing ``marker`` runs on the primary, then end its session."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(primary_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE state = 'active' AND pid <> pg_backend_pid() AND strpos(query, %s) > 0",
                [marker],
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            assert time.monotonic() < deadline, f"no statement with {marker!r} ran"
            time.sleep(0.01)


#: A write that spends a while inside its statement, so it can be cut there.
SLOW_INSERT = "INSERT INTO {table}(key, region) SELECT %s, %s FROM pg_sleep(0.3) /* cut-me */"


def _count(primary_url: str, table: str, key: str) -> Any:
    with psycopg.connect(primary_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE key = %s", [key]).fetchone()
    return row[0] if row else None


@asynccontextmanager
async def _writer(rig: Rig, path: str) -> AsyncIterator[Database]:
    """A client whose writes take ``path``: ``direct`` (syd) or ``bus`` (lax, via a worker)."""
    if path == "direct":
        async with Database(rig.settings("syd"), min_size=1, max_size=2) as db:
            yield db
    else:
        await rig.start_buses("syd", "lax")
        await rig.open_clients()
        assert rig.lax is not None
        yield rig.lax


PATHS = pytest.mark.parametrize("path", ["direct", "bus"])


@PATHS
async def test_write_on_a_connection_cut_while_idle_is_run_again(rig: Rig, path: str) -> None:
    """A write handed a pooled connection the server has ended is not reported as rejected:
    it runs again on a fresh connection (safe: its id is claimed in its own transaction) and
    succeeds; the row is there once. The same on the direct and the bus path."""
    async with _writer(rig, path) as db:
        await db.execute(f"INSERT INTO {rig.table}(key, region) VALUES ('warm', %s)", [path])
        assert _terminate_client_backends(rig.stack.primary.url) >= 1
        res = await db.execute(f"INSERT INTO {rig.table}(key, region) VALUES ('cut', %s)", [path])
    assert not res.duplicate and res.rowcount == 1
    assert _count(rig.stack.primary.url, rig.table, "cut") == 1


@PATHS
async def test_write_cut_mid_statement_is_run_again(rig: Rig, path: str) -> None:
    """A write whose session is ended mid-statement (SQLSTATE 57P01) is not rejected: the
    executor runs it again on a fresh connection, so the caller needs no retry of its own and
    the row is there once."""
    async with _writer(rig, path) as db:
        write = asyncio.create_task(db.execute(SLOW_INSERT.format(table=rig.table), ["mid", path]))
        await asyncio.to_thread(_terminate_running, rig.stack.primary.url, "cut-me")
        res = await write
    assert res.timings.attempts == 1 and not res.duplicate
    assert _count(rig.stack.primary.url, rig.table, "mid") == 1


#: The claim functions, as ``pg_stat_user_functions`` names them.
CLAIMS = ("claim_unseen_v3", "claim_v3")


def _claim_calls(primary_url: str) -> dict[str, int]:
    with psycopg.connect(primary_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT funcname, calls FROM pg_stat_user_functions "
            "WHERE schemaname = 'writebus' AND funcname = ANY(%s)",
            [list(CLAIMS)],
        ).fetchall()
    return {name: 0 for name in CLAIMS} | {name: int(calls) for name, calls in rows}


async def _claims_by(rig: Rig, writes: Any) -> dict[str, int]:
    """The claim functions a primary-region client's ``writes(db)`` called, counted by the
    server: only this client's sessions track function calls, and their counts reach
    ``pg_stat_user_functions`` when the sessions end."""
    url = rig.stack.primary.url
    before = _claim_calls(url)
    traced = make_conninfo(url, options="-c track_functions=pl")
    settings = rig.settings("syd").replace(database_url=traced, primary_database_url=traced)
    async with Database(settings, min_size=1, max_size=2, procedures=procedures) as db:
        await writes(db)
    deadline = time.monotonic() + 10
    while True:
        await asyncio.sleep(0.05)
        after = _claim_calls(url)
        calls = {name: after[name] - before[name] for name in CLAIMS}
        if calls != {name: 0 for name in CLAIMS} or time.monotonic() > deadline:
            await asyncio.sleep(0.5)  # every session's counts, not only the first to end
            after = _claim_calls(url)
            return {name: after[name] - before[name] for name in CLAIMS}


async def test_direct_first_try_locks_its_own_id_and_a_retry_looks_it_up(rig: Rig) -> None:
    """In the primary region a write (statements or a procedure) whose id the client made is
    claimed without a lookup (``claim_unseen_v3``: nobody can have used that id), but only in
    its first try: the try after a cut connection looks the id up (``claim_v3``), as does a
    write whose id the caller chose. The row is there once either way."""
    insert = f"INSERT INTO {rig.table}(key, region) VALUES (%s, 'direct')"

    async def made_ids(db: Database) -> None:
        for n in range(3):
            await db.execute(insert, [f"made-{n}"])
        await db.call("put_key", rig.table, "made-proc")

    assert await _claims_by(rig, made_ids) == {"claim_unseen_v3": 4, "claim_v3": 0}

    async def chosen_ids(db: Database) -> None:
        await db.execute(insert, ["chosen"], request_id="chosen-by-the-caller")
        await db.call("put_key", rig.table, "chosen-proc", request_id="chosen-for-the-call")

    assert await _claims_by(rig, chosen_ids) == {"claim_unseen_v3": 0, "claim_v3": 2}

    async def cut(db: Database) -> None:
        write = asyncio.create_task(db.execute(SLOW_INSERT.format(table=rig.table), ["cut", "d"]))
        await asyncio.to_thread(_terminate_running, rig.stack.primary.url, "cut-me")
        assert not (await write).duplicate

    assert await _claims_by(rig, cut) == {"claim_unseen_v3": 1, "claim_v3": 1}
    for key in ("made-0", "made-2", "made-proc", "chosen", "chosen-proc", "cut"):
        assert _count(rig.stack.primary.url, rig.table, key) == 1


def _wait_for_sleeping_commit(primary_url: str, timeout: float = 10.0) -> None:
    """Wait until a session sleeps inside a COMMIT (the deferred trigger below)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(primary_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                "AND strpos(query, 'COMMIT') > 0 AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            assert time.monotonic() < deadline, "no COMMIT slept"
            time.sleep(0.01)


async def _commit_cut(rig: Rig, sleep: float) -> WriteBusError:
    """A direct write from syd whose connection is cut while its COMMIT runs: the client
    reaches the primary through a proxy, closed mid-COMMIT, and a deferred trigger makes the
    COMMIT sleep ``sleep`` seconds. Returns the error the caller got; the COMMIT lands."""
    url, table = rig.stack.primary.url, rig.table
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({sleep}); RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE CONSTRAINT TRIGGER {table}_slow AFTER INSERT ON {table} DEFERRABLE "
            "INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.key = 'commit-cut') "
            f"EXECUTE FUNCTION {table}_slow()"
        )
    proxy = DelayProxy(target_port=int(conninfo_to_dict(url)["port"]))
    await proxy.start()
    proxied = make_conninfo(url, port=str(proxy.port))
    settings = rig.settings("syd").replace(database_url=proxied, primary_database_url=proxied)
    try:
        async with Database(settings, min_size=1, max_size=2) as db:
            write = asyncio.create_task(
                db.execute(
                    f"INSERT INTO {table}(key, region) VALUES ('commit-cut', 'direct')",
                    rpc_timeout=3.0,
                )
            )
            await asyncio.to_thread(_wait_for_sleeping_commit, url)
            await proxy.close()  # the client's side goes; the server's COMMIT goes on
            with pytest.raises(WriteBusError) as caught:
                await write
    finally:
        await proxy.close()
    deadline = time.monotonic() + sleep + 5
    while _count(url, table, "commit-cut") == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the COMMIT is still sleeping
    assert _count(url, table, "commit-cut") == 1
    return caught.value


async def test_a_commit_cut_then_no_database_is_unknown_never_not_applied(rig: Rig) -> None:
    """The try after the cut finds no database to connect to, and the bus no worker: the
    caller hears outcome-unknown -- the COMMIT did land, and "not applied" (the next try's own
    answer, before its claim could look the id up) would be false."""
    err = await _commit_cut(rig, sleep=0.5)
    assert err.outcome is Outcome.UNKNOWN, repr(err)


async def test_a_commit_cut_then_a_claim_refused_on_the_bus_is_unknown(rig: Rig) -> None:
    """After the cut the write goes over the bus, and the worker's claim gives up waiting for
    the id's lock -- still held by the sleeping COMMIT (the worker's lock_timeout is 100 ms):
    the worker answers unknown (the try holding the lock may still commit), and so does the
    caller; the COMMIT then lands."""
    url = make_conninfo(rig.stack.primary.url, options="-c lock_timeout=100")
    env = bus_env(
        rig.stack, "syd", WRITEBUS_PREFIX=rig.prefix, DATABASE_URL=url, PRIMARY_DATABASE_URL=url
    )
    bus = rig.stack.start_bus("syd", env=env, log_name=f"{rig.name}-impatient")
    rig.buses.append(bus)
    await bus.wait_ready_async(30)
    err = await _commit_cut(rig, sleep=3.0)
    assert err.outcome is Outcome.UNKNOWN, repr(err)
    # The client keeps resending while the worker answers unknown (until the COMMIT lands or
    # the call's time runs out), so the last attempt's own words vary: the class does not.
    assert isinstance(err, OutcomeUnknownError), repr(err)
