"""The exactly-once table's claim function, on the real primary."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from tests.support.stack import primary_rows
from writebus.bus import idempotency, partitions
from writebus.bus.execute import Limits, run_request
from writebus.bus.group import Executed, run_group
from writebus.bus.pg import lock_holders
from writebus.bus.proctx import Phase, run_procedure_tx
from writebus.client import ids, writes
from writebus.client.errors import ConfigError
from writebus.client.procedures import Procedures
from writebus.client.protocol import Request, Statement, StatementResult


async def _connect(stack: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True, **kwargs)


async def _claim_racing_an_original(
    stack: Any, claim_sql: str, rid: str, *, original_unseen: bool = False
) -> list[Any]:
    """Claim ``rid`` with ``claim_sql`` while another transaction holds its claim (the same
    command, or the unseen claim), then let that one record the id and commit: the racing
    claim's rows (or its error)."""
    first, second = await _connect(stack), await _connect(stack)
    try:
        await idempotency.ensure_schema(first, None)
        await first.execute("BEGIN")
        if original_unseen:
            cur = await first.execute(
                idempotency.claim_sql(unseen=True), idempotency.claim_params([rid], unseen=True)
            )
            assert await cur.fetchall() == []  # nothing looked up
        else:
            await first.execute(claim_sql, idempotency.claim_params([rid]))

        async def racing_claim() -> list[Any]:
            await second.execute("BEGIN")
            try:
                # This statement's own snapshot is taken before it waits for the lock.
                cur = await second.execute(claim_sql, idempotency.claim_params([rid]))
                return await cur.fetchall() if cur.description else []
            finally:
                await second.execute("ROLLBACK")

        racing = asyncio.create_task(racing_claim())
        await asyncio.sleep(0.3)
        assert not racing.done()  # waiting on the advisory lock
        await first.execute(*idempotency.store_statement([(rid, b"digest", b"result")]))
        await first.execute("COMMIT")
        return await asyncio.wait_for(racing, 5)
    finally:
        await first.close()
        await second.close()


async def test_claim_waits_for_a_racing_original_and_sees_its_commit(stack: Any) -> None:
    """A claim blocked on the id's lock returns the row the lock holder committed meanwhile:
    the lookup runs after the lock was granted, on a fresh snapshot. (With the lookup on the
    snapshot the claim started with, the row would be missing and the id applied twice.)"""
    rid = uuid.uuid4().hex
    rows = await _claim_racing_an_original(stack, idempotency.CLAIM_SQL, rid)
    assert [(r[0], bytes(r[1]), bytes(r[2])) for r in rows] == [(rid, b"digest", b"result")]


@pytest.mark.parametrize("retry_sql", ["CLAIM_SQL", "CLAIM_FRESH_SQL"])
async def test_a_retry_waits_for_an_unseen_original_and_sees_its_commit(
    stack: Any, retry_sql: str
) -> None:
    """The unseen claim (``claim_unseen_v3``: an original that skips the lookup) takes the
    same lock as every other claim: a retry's claim, either kind, waits for the original and
    then finds what it committed. With another lock, or none, the retry would run again."""
    rid = str(ids.new_id())
    claim_sql = getattr(idempotency, retry_sql)
    if claim_sql == idempotency.CLAIM_SQL:
        rows = await _claim_racing_an_original(stack, claim_sql, rid, original_unseen=True)
        assert [(r[0], bytes(r[1]), bytes(r[2])) for r in rows] == [(rid, b"digest", b"result")]
        return
    with pytest.raises(psycopg.Error) as caught:
        await _claim_racing_an_original(stack, claim_sql, rid, original_unseen=True)
    assert caught.value.sqlstate == idempotency.REPEATED_SQLSTATE


async def test_unseen_claim_does_not_look_up(stack: Any) -> None:
    """The unseen claim returns no rows even for an applied id: it is for ids nobody can have
    used, and skipping the lookup is the point (the caller's promise, not the database's)."""
    conn = await _connect(stack)
    try:
        await idempotency.ensure_schema(conn, None)
        rid = str(ids.new_id())
        await conn.execute(*idempotency.store_statement([(rid, b"digest", b"result")]))
        async with conn.transaction():
            found = await conn.execute(idempotency.CLAIM_SQL, idempotency.claim_params([rid]))
            assert len(await found.fetchall()) == 1
            unseen = await conn.execute(
                idempotency.claim_sql(unseen=True), idempotency.claim_params([rid], unseen=True)
            )
            assert await unseen.fetchall() == []
    finally:
        await conn.close()


async def test_fresh_claim_waits_for_a_racing_original_and_refuses_its_id(stack: Any) -> None:
    """The first try's claim (``claim_fresh_v3``) blocked on the id's lock raises ``WB001``
    once the lock holder commits the id: its lookup, too, runs after the lock was granted."""
    with pytest.raises(psycopg.Error) as caught:
        await _claim_racing_an_original(stack, idempotency.CLAIM_FRESH_SQL, str(ids.new_id()))
    assert caught.value.sqlstate == idempotency.REPEATED_SQLSTATE


@pytest.mark.parametrize("dated", [True, False], ids=["uuid7", "undated"])
async def test_fresh_claim_finds_applied_ids_in_any_partition(stack: Any, dated: bool) -> None:
    """The first try's claim finds an id applied in an earlier hour's partition (its lookup is
    pruned by ``since``, never past the record), in a call with a new id and past PL/pgSQL's
    five custom plans; a claim of new ids alone passes."""
    conn = await _connect(stack)
    try:
        earlier = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=50)
        await idempotency.ensure_schema(conn, None, now=earlier)  # that hour's partition too
        old = str(ids.new_id()) if dated else uuid.uuid4().hex
        await conn.execute(
            "INSERT INTO writebus.applied (id, applied_at, digest, result) "
            "VALUES (%s, greatest(now() - interval '50 minutes', to_timestamp(%s)), "
            "'d', 'r')",
            [old, idempotency.record_floor(old) or 0],
        )
        for _ in range(7):  # past PL/pgSQL's five custom plans: the cached plan answers too
            new = str(ids.new_id()) if dated else uuid.uuid4().hex
            async with conn.transaction():
                await conn.execute(idempotency.CLAIM_FRESH_SQL, idempotency.claim_params([new]))
            try:
                async with conn.transaction():
                    await conn.execute(
                        idempotency.CLAIM_FRESH_SQL, idempotency.claim_params([new, old])
                    )
            except psycopg.Error as exc:
                assert exc.sqlstate == idempotency.REPEATED_SQLSTATE
            else:
                raise AssertionError("an applied id was not found")
    finally:
        await conn.close()


async def test_ensure_schema_keeps_another_roles_claim_function(stack: Any) -> None:
    """The bus and an application's direct writes may connect as different roles: a role that
    does not own the claim function still starts (the function is created when missing, never
    replaced), and can claim with it."""
    role = f"wb_{uuid.uuid4().hex[:8]}"
    admin = await _connect(stack)
    try:
        await idempotency.ensure_schema(admin, None)
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        cur = await admin.execute("SELECT current_database()")
        database = (await cur.fetchone() or [""])[0]
        await admin.execute(f'GRANT CREATE ON DATABASE "{database}" TO {role}')
        await admin.execute(f"GRANT USAGE, CREATE ON SCHEMA writebus TO {role}")
        await admin.execute(f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA writebus TO {role}")
        other = await _connect(stack, user=role)
        try:
            await idempotency.ensure_schema(other, None)
            rid = uuid.uuid4().hex
            async with other.transaction():
                cur = await other.execute(idempotency.CLAIM_SQL, idempotency.claim_params([rid, rid]))
                assert await cur.fetchall() == []
        finally:
            await other.close()
        cur = await admin.execute(
            "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE oid = "
            "'writebus.claim_v3(text[], float8)'::regprocedure"
        )
        assert await cur.fetchone() != (role,)
    finally:
        # Anything the role made (a partition, should an hour have turned) goes to the admin.
        await admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def _race_under_repeatable_read(stack: Any, request: Request, result: bytes,
                                      run: Callable[[Any], Awaitable[Any]]) -> Any:  # fmt: skip
    """Hold ``request``'s id, start ``run`` on a connection whose default isolation is
    REPEATABLE READ (it blocks on the id), commit ``request`` as applied, return what ``run``
    returned."""
    holder, runner = await _connect(stack), await _connect(stack)
    try:
        await idempotency.ensure_schema(holder, None)
        await runner.execute("SET default_transaction_isolation = 'repeatable read'")
        await holder.execute("BEGIN")
        await holder.execute(idempotency.CLAIM_SQL, idempotency.claim_params([request.id]))
        racing = asyncio.create_task(run(runner))
        await asyncio.sleep(0.3)
        assert not racing.done()
        row = (request.id, idempotency.request_digest(request), result)
        await holder.execute(*idempotency.store_statement([row]))
        await holder.execute("COMMIT")
        return await asyncio.wait_for(racing, 5)
    finally:
        await holder.close()
        await runner.close()


async def test_a_group_claims_at_read_committed_whatever_the_default(
    stack: Any, table: str
) -> None:
    """On a database whose default isolation is REPEATABLE READ, a group racing its original
    still sees the original's record and answers from it: the group's transaction begins at
    READ COMMITTED. (At the default, its lookup would use the snapshot taken before the lock
    wait, miss the record, and apply the write a second time.)"""
    req = Request(id=uuid.uuid4().hex,
                  statements=[Statement(sql=f"INSERT INTO {table}(body) VALUES (%s)",
                                        params=["raced"])])  # fmt: skip
    stored = idempotency.encode_result([StatementResult(rowcount=1)], None)

    async def run(conn: Any) -> Any:
        return await run_group(conn, [req], read_lsn=True, check=lambda *_: None)

    [outcome] = await _race_under_repeatable_read(stack, req, stored, run)
    assert isinstance(outcome, Executed) and outcome.duplicate
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]


async def test_a_procedure_claims_at_read_committed_whatever_the_default(
    stack: Any, table: str
) -> None:
    """The same race for a procedure: it is answered from the original's record, not run."""
    req = Request(id=uuid.uuid4().hex, procedure="add", args=["raced"])
    stored = idempotency.encode_result([], "first")

    async def add(conn: Any, body: str) -> str:
        await conn.execute(f"INSERT INTO {table}(body) VALUES (%s)", [body])
        return "second"

    async def run(conn: Any) -> Any:
        return await run_procedure_tx(conn, req, add, exactly_once=True, primary=True,
                                      check=lambda *_: None, phase=Phase())  # fmt: skip

    outcome = await _race_under_repeatable_read(stack, req, stored, run)
    assert outcome.duplicate and outcome.value == "first"
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]


@pytest.mark.parametrize("kind", ["statements", "procedure"])
async def test_a_callers_pool_that_is_not_autocommit_claims_at_read_committed(
    stack: Any, table: str, kind: str
) -> None:
    """An application's own pool, made as psycopg makes one by default (not autocommit), on a
    database whose default isolation is REPEATABLE READ: a write racing its original is still
    answered from the original's record, and the pool's connection goes back as it came -- not
    autocommit, at the default level. (psycopg's implicit BEGIN comes first there, and the
    write's own BEGIN still sets READ COMMITTED: no snapshot has been taken yet. A procedure
    used to leave the connection at READ COMMITTED for good, under the application's own
    transactions.)"""
    insert = f"INSERT INTO {table}(body) VALUES (%s)"
    if kind == "statements":
        req = Request(id=uuid.uuid4().hex, statements=[Statement(sql=insert, params=["raced"])])
        stored = idempotency.encode_result([StatementResult(rowcount=1)], None)
    else:
        req = Request(id=uuid.uuid4().hex, procedure="add", args=["raced"])
        stored = idempotency.encode_result([], "first")
    procs = Procedures()

    @procs.register(name="add")
    async def add(conn: Any, body: str) -> str:
        await conn.execute(insert, [body])
        return "second"

    repeatable = {"options": "-c default_transaction_isolation=repeatable\\ read"}
    async with AsyncConnectionPool(stack.primary.url, min_size=1, max_size=1,
                                   kwargs=repeatable, open=False) as pool:  # fmt: skip

        async def run(_: Any) -> Any:
            return await run_request(pool, req, procedures=procs, limits=Limits())

        outcome = await _race_under_repeatable_read(stack, req, stored, run)
        async with pool.connection() as conn:
            cur = await conn.execute("SHOW transaction_isolation")
            assert await cur.fetchone() == ("repeatable read",)
            assert (conn.autocommit, conn.isolation_level) == (False, None)
    assert outcome.duplicate
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]


# -- who may forget ids: the bus, with its window -------------------------------------------


@contextlib.asynccontextmanager
async def _scratch_database(stack: Any) -> AsyncIterator[str]:
    """A database of its own on the primary: no bus maintains its ``writebus.applied``."""
    name = f"wb_scratch_{uuid.uuid4().hex[:8]}"
    async with await _connect(stack) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(stack.primary.url, dbname=name)
    finally:
        async with await _connect(stack) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def _record(conn: psycopg.AsyncConnection[Any], rid: str, at: datetime.datetime) -> None:
    await conn.execute(
        "INSERT INTO writebus.applied (id, applied_at, digest, result) VALUES (%s, %s, '', '')",
        [rid, at],
    )


async def test_an_apps_start_keeps_ids_the_bus_still_needs(stack: Any) -> None:
    """The bus keeps ids for its window (72 h here); an application opening in the primary
    region makes sure the table exists, and must not drop what is past some other window: a
    retry of that id would then run again. (Before, it dropped everything past 24 h.)"""
    now = datetime.datetime.now(datetime.UTC)
    day_and_more = now - datetime.timedelta(hours=30)
    async with _scratch_database(stack) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as bus:
            await idempotency.ensure_schema(bus, 72 * 3600.0, now=day_and_more)
            await idempotency.ensure_schema(bus, 72 * 3600.0)
            await _record(bus, "kept", day_and_more)
            async with AsyncConnectionPool(url, kwargs={"autocommit": True}, open=False) as pool:
                await writes.ensure_exactly_once_table(pool)
            cur = await bus.execute("SELECT id FROM writebus.applied")
            assert await cur.fetchall() == [("kept",)]
            # The bus's own maintenance, with its window, still forgets it in time.
            later = now + datetime.timedelta(hours=43)
            assert await partitions.maintain(bus, 72 * 3600.0, now=later) >= 1
            cur = await bus.execute("SELECT id FROM writebus.applied")
            assert await cur.fetchall() == []


async def test_partitions_follow_the_databases_clock_not_the_workers(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records are placed in partitions by the database's clock. A worker whose clock ran
    3 h ahead dropped, with a 1 h window, the partition holding this hour's records: a
    resend inside the window would run again. Maintenance measures by the database's."""

    class Ahead(datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.datetime.now(tz) + datetime.timedelta(hours=3)

    worker_clock = types.SimpleNamespace(
        datetime=Ahead, timedelta=datetime.timedelta, UTC=datetime.UTC
    )
    async with _scratch_database(stack) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as bus:
            await idempotency.ensure_schema(bus, 3600.0)
            await bus.execute("INSERT INTO writebus.applied (id, applied_at, digest, result) "
                              "VALUES ('this hour', now(), '', '')")  # fmt: skip
            monkeypatch.setattr(partitions, "datetime", worker_clock)
            monkeypatch.setattr(idempotency, "datetime", worker_clock)
            await idempotency.ensure_schema(bus, 3600.0)
            await partitions.maintain(bus, 3600.0)
            cur = await bus.execute("SELECT id FROM writebus.applied")
            assert await cur.fetchall() == [("this hour",)]


@pytest.mark.parametrize("window", [None, 24 * 3600.0])
async def test_an_old_table_is_migrated_within_the_window(
    stack: Any, window: float | None
) -> None:
    """A table of the old, unpartitioned format: the bus keeps its rows inside its window;
    a caller without a window (an application) keeps every row."""
    now = datetime.datetime.now(datetime.UTC)
    ages = {"new": 1, "day_old": 20, "week_old": 24 * 7}
    async with _scratch_database(stack) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "CREATE SCHEMA writebus; CREATE TABLE writebus.applied (id text PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now(), digest bytea, result bytea)"
            )
            for rid, hours in ages.items():
                await _record(conn, rid, now - datetime.timedelta(hours=hours))
            await idempotency.ensure_schema(conn, window, now=now)
            cur = await conn.execute("SELECT id FROM writebus.applied ORDER BY applied_at DESC")
            kept = [r[0] for r in await cur.fetchall()]
            cur = await conn.execute("SELECT to_regclass('writebus.applied_v1') IS NULL")
            assert await cur.fetchone() == (True,)
    assert kept == (list(ages) if window is None else ["new", "day_old"])


@pytest.mark.parametrize("datestyle", ["SQL, DMY", "German, DMY", "Postgres, MDY"])
async def test_partitions_expire_whatever_the_datestyle(stack: Any, datestyle: str) -> None:
    """Maintenance reads each partition's bounds as text, which the session's ``DateStyle``
    and ``TimeZone`` shape: on a database set to another style, partitions past the window
    are still dropped, and an old-format table still migrates. (Before, the bounds did not
    parse, and nothing was ever dropped, silently.)"""
    now = datetime.datetime.now(datetime.UTC)
    async with _scratch_database(stack) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("ALTER DATABASE {} SET DateStyle = {}; ALTER DATABASE {} SET TimeZone "
                        "= 'Asia/Kolkata'").format(  # fmt: skip
                    sql.Identifier(admin.info.dbname), sql.Literal(datestyle),
                    sql.Identifier(admin.info.dbname),
                )
            )
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SHOW DateStyle")
            assert await cur.fetchone() == (datestyle,)
            await conn.execute(
                "CREATE SCHEMA writebus; CREATE TABLE writebus.applied (id text PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now(), digest bytea, result bytea)"
            )
            await _record(conn, "old", now - datetime.timedelta(hours=30))
            await idempotency.ensure_schema(conn, None, now=now)
            cur = await conn.execute("SELECT id FROM writebus.applied")
            assert await cur.fetchall() == [("old",)]
            assert await partitions.maintain(conn, 24 * 3600.0, now=now) >= 1
            cur = await conn.execute("SELECT id FROM writebus.applied")
            assert await cur.fetchall() == []


async def test_a_drop_behind_a_long_write_waits_for_a_later_pass_and_creation_does_not(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropping a partition needs the whole table, and every write would queue behind the
    wait: behind a long write, the drop gives up within its lock timeout and is left to a
    later pass -- but the partitions needed soon are made all the same (a transaction of their
    own; they used to roll back with the drop). The pass after the write ends drops."""
    now = datetime.datetime.now(datetime.UTC)
    soon = now + datetime.timedelta(hours=3)
    async with _scratch_database(stack) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn, \
                await psycopg.AsyncConnection.connect(url) as writer:  # fmt: skip
            await idempotency.ensure_schema(conn, None, now=now - datetime.timedelta(hours=30))
            await idempotency.ensure_schema(conn, None, now=now)
            await _record(writer, "long write", now)  # its transaction stays open
            caplog.set_level("WARNING", logger="writebus.bus.idempotency")
            assert await partitions.maintain(conn, 24 * 3600.0, now=soon) == 0
            assert "maintenance_deferred" in caplog.text and "drop" in caplog.text
            names = [partitions.partition_name(b[0]) for b in partitions.partition_bounds(soon)]
            cur = await conn.execute("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON "
                                     "c.oid = i.inhrelid WHERE c.relname = ANY(%s)", [names])  # fmt: skip
            assert await cur.fetchone() == (len(names),)
            await writer.commit()
            assert await partitions.maintain(conn, 24 * 3600.0, now=soon) >= 1


async def test_drops_do_not_ask_for_the_table_behind_a_dump(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``pg_dump`` holds the table (ACCESS SHARE) for hours. Asking for the drops' lock
    behind it would queue every write for the lock timeout at every pass; once its transaction
    has been under way a while, maintenance does not ask, says who holds the table, and drops
    on the first pass after it ends."""
    now = datetime.datetime.now(datetime.UTC)
    async with _scratch_database(stack) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn, \
                await psycopg.AsyncConnection.connect(url) as dump:  # fmt: skip
            await idempotency.ensure_schema(conn, None, now=now - datetime.timedelta(hours=30))
            await idempotency.ensure_schema(conn, None, now=now)
            await dump.execute("LOCK TABLE writebus.applied IN ACCESS SHARE MODE")
            await asyncio.sleep(partitions.LONG_TRANSACTION_S + 0.2)
            caplog.set_level("WARNING", logger="writebus.bus.idempotency")
            assert await partitions.maintain(conn, 24 * 3600.0, now=now) == 0
            assert "is not asked for" in caplog.text
            assert f"'pid': {dump.info.backend_pid}" in caplog.text
            await dump.rollback()
            assert await partitions.maintain(conn, 24 * 3600.0, now=now) >= 1


@contextlib.asynccontextmanager
async def _least_privileged_app(url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection as a role with only what an application's direct writes use: the
    schema's USAGE, SELECT and INSERT on the table -- no CREATE anywhere, not the owner."""
    role = f"wb_app_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC; REVOKE CREATE, TEMP "
                            f"ON DATABASE {admin.info.dbname} FROM PUBLIC")  # fmt: skip
        await admin.execute(f"GRANT USAGE ON SCHEMA writebus TO {role}; "
                            f"GRANT SELECT, INSERT ON writebus.applied TO {role}")  # fmt: skip
        try:
            async with await psycopg.AsyncConnection.connect(
                make_conninfo(url, user=role), autocommit=True
            ) as app:
                yield app
        finally:
            await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_an_app_role_that_may_not_create_still_starts_and_writes(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An application's role with no right to create anything -- what a careful deployment
    gives it -- opens when the bus made everything (its schema step only reads the catalog),
    and also when only the partitions ahead are missing (the bus makes those: a warning).
    With the current hour's partition missing, it may not write, and says so in one typed
    line; a bus with such a role is told so at its start. (Before, its open() ran CREATE ...
    IF NOT EXISTS, which needs the rights even when everything exists, and failed with
    psycopg's InsufficientPrivilege.)"""
    now = datetime.datetime.now(datetime.UTC)
    async with _scratch_database(stack) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as bus:
            await idempotency.ensure_schema(bus, 24 * 3600.0, now=now)
        async with _least_privileged_app(url) as app:
            await idempotency.ensure_schema(app, None, now=now)
            rid = str(ids.new_id())
            async with app.transaction():
                await app.execute(idempotency.CLAIM_SQL, idempotency.claim_params([rid]))
                await app.execute(*idempotency.store_statement([(rid, b"d", b"r")]))
            caplog.set_level("WARNING", logger="writebus.bus.idempotency")
            await idempotency.ensure_schema(app, None, now=now + datetime.timedelta(hours=1))
            assert "partitions_not_made" in caplog.text
            with pytest.raises(ConfigError, match="may not use or create") as info:
                await idempotency.ensure_schema(app, None, now=now + datetime.timedelta(days=9))
            assert "\n" not in str(info.value)
            # A bus with such a role is told at its start, not when the partitions run out: in
            # its log while the current partition exists (another worker's role may make the
            # rest), else by refusing to start; one that may create but does not own the
            # table, in its log too.
            caplog.clear()
            await idempotency.ensure_schema(app, 24 * 3600.0, now=now)
            assert "partitions_not_made" in caplog.text and "ERROR" in caplog.text
            with pytest.raises(ConfigError, match="bus's database role"):
                await idempotency.ensure_schema(app, 24 * 3600.0, now=now + datetime.timedelta(days=9))
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
                await admin.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}; GRANT CREATE ON "
                                            "SCHEMA writebus TO {}").format(  # fmt: skip
                    sql.Identifier(admin.info.dbname), sql.Identifier(app.info.user),
                    sql.Identifier(app.info.user)))
            caplog.clear()
            await idempotency.ensure_schema(app, 24 * 3600.0, now=now)
            assert "idempotency.not_owner" in caplog.text


# -- the caller's search_path -----------------------------------------------------------------

#: Functions a user who may create in ``public`` (every user before Postgres 15) could define:
#: each matches its call's arguments better than ``pg_catalog``'s, so an unqualified call runs
#: it, as the calling role.
_SHADOWS = (
    "CREATE FUNCTION public.hashtextextended(text, integer) RETURNS bigint LANGUAGE plpgsql "
    "AS $$ BEGIN RAISE EXCEPTION 'shadowed: hashtextextended'; END $$",
    "CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql "
    "AS $$ BEGIN RAISE EXCEPTION 'shadowed: unnest'; END $$",
    "CREATE FUNCTION public.to_timestamp(text) RETURNS timestamptz LANGUAGE plpgsql "
    "AS $$ BEGIN RAISE EXCEPTION 'shadowed: to_timestamp'; END $$",
    "CREATE FUNCTION public.pg_advisory_xact_lock(integer) RETURNS void LANGUAGE plpgsql "
    "AS $$ BEGIN RAISE EXCEPTION 'shadowed: pg_advisory_xact_lock'; END $$",
    "CREATE FUNCTION public.pg_try_advisory_xact_lock(integer) RETURNS boolean "
    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'shadowed: pg_try_advisory_xact_lock'; END $$",
    "CREATE FUNCTION public.pg_total_relation_size(oid) RETURNS bigint LANGUAGE plpgsql "
    "AS $$ BEGIN RAISE EXCEPTION 'shadowed: pg_total_relation_size'; END $$",
    # Operators too: an oid compared with a regclass or regnamespace.
    *(
        f"CREATE FUNCTION public.shadow_eq(oid, {t}) RETURNS boolean LANGUAGE plpgsql "
        f"AS $$ BEGIN RAISE EXCEPTION 'shadowed: = (oid, {t})'; END $$; "
        f"CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = {t}, FUNCTION = public.shadow_eq)"
        for t in ("regclass", "regnamespace")
    ),
)


async def test_functions_on_the_callers_search_path_never_stand_in(stack: Any) -> None:
    """Functions in ``public`` that match the exactly-once SQL's calls better than
    ``pg_catalog``'s -- an ``int4`` where it takes an ``int8``, a ``text[]`` for ``anyarray``,
    ``text`` for an untyped NULL -- are never run: not by the schema step or maintenance, the
    claims (bound and written out), nor the record of an undated id. Each shadow raises if
    called. (Version 2 of the claim functions ran two of them, as the worker's role.) The
    locks taken are ``pg_catalog.hashtextextended``'s."""
    async with _scratch_database(stack) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for create in _SHADOWS:
                await conn.execute(create)
            cur = await conn.execute("SHOW search_path")
            assert await cur.fetchone() == ('"$user", public',)
            await idempotency.ensure_schema(conn, 24 * 3600.0)
            assert await partitions.maintain(conn, 24 * 3600.0) == 0
            undated, dated = f"job-{uuid.uuid4().hex}", ids.new_id()
            for claim in (idempotency.CLAIM_SQL, idempotency.CLAIM_FRESH_SQL):
                async with conn.transaction():
                    await conn.execute(claim, idempotency.claim_params([undated, dated]))
            async with conn.transaction():
                await conn.execute(idempotency.CLAIM_UNSEEN_SQL,
                                   idempotency.claim_params([dated], unseen=True))  # fmt: skip
                cur = await conn.execute(
                    "SELECT objid::int8 + (classid::int8 << 32) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                )
                locked = [r[0] for r in await cur.fetchall()]
                cur = await conn.execute(
                    "SELECT pg_catalog.hashtextextended(%s, 7207::int8)", [dated]
                )
                assert locked == [(await cur.fetchone() or [None])[0]]
                rows = [(undated, b"d", b"r"), (dated, b"d", b"r")]
                await conn.execute(*idempotency.store_statement(rows))
            cur = await conn.execute("SELECT count(*) FROM writebus.applied")
            assert await cur.fetchone() == (2,)
            assert await partitions.size_bytes(conn) > 0
            assert await lock_holders(conn, "writebus.applied") == []
