"""The write path end to end on real servers: lax writes through the bus, reads locally."""

from __future__ import annotations

import asyncio
import decimal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import nats
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Json, Jsonb

from tests.support.pause import MARK, pause_before_marked
from tests.support.stack import PROCEDURES, primary_rows, settings_for
from writebus.bus import claimsql
from writebus.client import (
    Database,
    DatabaseTimeoutError,
    NoWorkerError,
    Outcome,
    OutcomeUnknownError,
    ProcedureError,
    ProtocolError,
    ReplicationTimeoutError,
    RowFactoryError,
    Statement,
    TrackerError,
    UnrecordedOutcomeError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.lsn import format_lsn


async def test_read_your_writes_from_replica_region(lax_db: Database, table: str) -> None:
    """100 writes from lax, each read back at once from the local replica: 0 stale."""
    stale = 0
    for i in range(100):
        res = await lax_db.execute(
            f"INSERT INTO {table}(body) VALUES (%s) RETURNING id", [f"w{i}"]
        )
        assert res.via_bus and res.replicated and res.lsn is not None
        row = await lax_db.fetchrow(f"SELECT body FROM {table} WHERE id = %s", [res.rows[0][0]])
        stale += row is None
    assert stale == 0
    assert await lax_db.fetchval(f"SELECT count(*) FROM {table}") == 100
    assert lax_db.tracker is not None and lax_db.tracker.waiting == 0


async def test_reads_go_to_the_local_replica(lax_db: Database) -> None:
    """fetch* in lax run on the standby."""
    assert await lax_db.fetchval("SELECT pg_is_in_recovery()") is True


async def test_await_replication_false_returns_after_commit(
    lax_db: Database, table: str
) -> None:
    """await_replication=False returns the LSN without waiting; wait_for_lsn then catches up."""
    res = await lax_db.execute(
        f"INSERT INTO {table}(body) VALUES ('nowait')", await_replication=False
    )
    assert res.lsn is not None and not res.replicated and res.timings.replication_ms is None
    assert res.lsn_text == format_lsn(res.lsn)
    replayed = await lax_db.wait_for_lsn(res.lsn, timeout=5)
    assert replayed >= res.lsn
    assert await lax_db.fetchval(f"SELECT count(*) FROM {table} WHERE body = 'nowait'") == 1


async def test_primary_region_writes_directly(syd_db: Database, table: str) -> None:
    """In the primary region, writes and procedures run on the local primary, not the bus."""
    res = await syd_db.execute(f"INSERT INTO {table}(body) VALUES ('local') RETURNING id")
    assert not res.via_bus and res.lsn is not None and not res.replicated
    assert syd_db.tracker is None
    assert await syd_db.fetchval(f"SELECT body FROM {table} WHERE id = %s", [res.rows[0][0]]) \
        == "local"
    new_id = await syd_db.call("add_note", table, "via-proc")
    assert await syd_db.fetchval(f"SELECT body FROM {table} WHERE id = %s", [new_id]) == "via-proc"


async def test_a_failing_row_factory_on_a_direct_write_says_it_committed(
    syd_db: Database, table: str
) -> None:
    """In the primary region too: the write committed, so the factory's failure is a
    RowFactoryError, applied, with the position; the row is there."""
    with pytest.raises(RowFactoryError) as info:
        await syd_db.execute(f"INSERT INTO {table}(body) VALUES ('d') RETURNING id",
                             row_factory=lambda cur: lambda row: row[1])  # fmt: skip
    assert info.value.outcome is Outcome.APPLIED and info.value.lsn is not None
    assert isinstance(info.value.__cause__, IndexError)
    assert await syd_db.fetchval(f"SELECT count(*) FROM {table} WHERE body = 'd'") == 1


async def test_a_direct_write_waiting_for_a_lock_answers_within_its_timeout(
    syd_db: Database, stack: Any, table: str
) -> None:
    """A primary-region write whose row another session holds locked ends after its
    rpc_timeout -- DatabaseTimeoutError, an unknown outcome -- rather than wait for the lock
    for good (as it did). Its run goes on there, as a bus worker's would: a resend under its
    id waits for it and learns that it applied, once; nothing applies twice."""
    primary_rows(stack, f"INSERT INTO {table}(body, n) VALUES ('locked', 0) RETURNING id")
    bump = f"UPDATE {table} SET n = n + 1 WHERE body = 'locked'"
    with psycopg.connect(stack.primary.url) as holder:
        holder.execute(f"SELECT * FROM {table} WHERE body = 'locked' FOR UPDATE")
        with pytest.raises(DatabaseTimeoutError) as info:
            await asyncio.wait_for(syd_db.execute(bump, rpc_timeout=0.5), 30)
        err = info.value
        assert err.outcome is Outcome.UNKNOWN and err.request_id
        resend = asyncio.create_task(syd_db.execute(bump, request_id=err.request_id))
        await asyncio.sleep(0.2)
        assert not resend.done()  # waits for the first run, which still waits for the lock
        holder.rollback()
    again = await asyncio.wait_for(resend, 30)
    assert again.duplicate and primary_rows(stack, f"SELECT n FROM {table}") == [(1,)]


async def test_psycopg_json_wrappers_store_the_same_json_from_every_region(
    syd_db: Database, lax_db: Database, stack: Any
) -> None:
    """psycopg's Jsonb and Json store their JSON from both regions, in a jsonb column and in
    a text one. (From lax they went as their Python text, 'Jsonb({...})': refused by the
    jsonb column, stored as such in the text one.)"""
    name = f"js_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, doc jsonb, note text)")
    for i, db in enumerate((syd_db, lax_db)):
        await db.execute(f"INSERT INTO {name} VALUES (%s, %s, %s)",
                         [i, Jsonb({"a": [1, "x"]}), Json({"b": None})])  # fmt: skip
    rows = primary_rows(stack, f"SELECT id, doc, note::jsonb FROM {name} ORDER BY id")
    assert rows == [(i, {"a": [1, "x"]}, {"b": None}) for i in (0, 1)]


async def test_an_integer_past_64_bits_is_refused_before_anything_is_sent(
    syd_db: Database, lax_db: Database, table: str
) -> None:
    """msgpack carries integers of 64 bits: a larger parameter is a ProtocolError, not
    applied, in both regions (it escaped as a bare OverflowError); as a Decimal it goes."""
    for db in (syd_db, lax_db):
        with pytest.raises(ProtocolError) as info:
            await db.execute(f"UPDATE {table} SET n = %s WHERE false", [2**70])
        assert info.value.outcome is Outcome.NOT_APPLIED and "Decimal" in str(info.value)
        res = await db.execute("SELECT %s::numeric", [decimal.Decimal(2**70)])
        assert decimal.Decimal(res.rows[0][0]) == 2**70  # numeric comes back as text


async def test_primary_region_commits_are_durable_whatever_the_session_default(
    stack: Any, buses: Any
) -> None:
    """Direct writes are acknowledged once their COMMIT is flushed, as on the bus: a
    database (or role, or URL) defaulting to synchronous_commit=off gets 'local' on the
    primary region's pool, whose connections serve both reads and direct writes."""
    url = make_conninfo(stack.primary.url, options="-c synchronous_commit=off")
    async with Database(settings_for(stack, "syd", database_url=url)) as db:
        assert await db.fetchval("SELECT current_setting('synchronous_commit')") == "local"
        res = await db.execute("SELECT 1")
        assert not res.via_bus and res.lsn is not None


@pytest.mark.parametrize(
    "dropped",
    [["claim_unseen_v3(text[])"],
     ["claim_unseen_v3(text[])", "claim_fresh_v3(text[], float8)", "claim_v3(text[], float8)"]],
    ids=["the unseen claim", "every claim function"],
)  # fmt: skip
async def test_a_primary_region_write_remakes_lost_claim_functions(
    stack: Any, table: str, monkeypatch: pytest.MonkeyPatch, dropped: list[str]
) -> None:
    """A database that lost writebus' claim functions after the app opened (one restored
    from an older writebus's dump, or swapped in) still takes writes: refused at the claim,
    nothing ran, the app makes the functions again, as its open() did, and the write runs
    once. (Before, a database of the previous version's functions refused every write.)
    No bus here: a syd bus starting meanwhile would make them itself."""
    from writebus.client import db as db_module

    writes = db_module.writes  # the module Database calls (tests may have re-imported others)
    missing: list[bool] = []
    check = writes.claim_function_missing

    def seen(error: Any) -> bool:
        missing.append(check(error))
        return missing[-1]

    monkeypatch.setattr(writes, "claim_function_missing", seen)
    # The claim's error waits while the statement is sent (psycopg then meets it there and
    # reports the statement as PipelineAborted): still the claim's refusal, not a lost
    # connection answered by a retry on a fresh one.
    paused = pause_before_marked(monkeypatch)
    from writebus.bus import execute

    retried: list[str] = []
    monkeypatch.setattr(execute.log, "info", lambda event, **_: retried.append(event))
    try:
        async with Database(settings_for(stack, "syd")) as db:  # opening makes the functions
            with psycopg.connect(stack.primary.url, autocommit=True) as conn:
                for signature in dropped:
                    conn.execute(f"DROP FUNCTION writebus.{signature}")
            res = await db.execute(f"INSERT INTO {table}(body) VALUES ('lost claims') {MARK}")
        made = primary_rows(stack, "SELECT count(to_regprocedure(s)) FROM unnest(%s::text[]) s",
                            [[sig for sig, _ in claimsql.FUNCTIONS]])  # fmt: skip
    finally:
        with psycopg.connect(stack.primary.url, autocommit=True) as conn:
            for signature, create in claimsql.FUNCTIONS:
                if conn.execute("SELECT to_regprocedure(%s)", [signature]).fetchone() == (None,):
                    conn.execute(create)
    assert paused[0] and missing == [True] and retried == []  # paused[0]: the error waited
    assert made == [(len(claimsql.FUNCTIONS),)]
    assert not res.via_bus and not res.duplicate and res.timings.attempts == 1
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(1,)]


async def test_batch_is_atomic(lax_db: Database, stack: Any, table: str) -> None:
    """A failing statement rolls the whole batch back and reports its SQLSTATE and index."""
    with pytest.raises(WriteRejectedError) as info:
        await lax_db.batch(
            [
                (f"INSERT INTO {table}(body) VALUES (%s)", ["a"]),
                (f"INSERT INTO {table}(body) VALUES (%s)", ["b"]),
                (f"INSERT INTO {table}(body, n) VALUES (%s, %s)", ["c", -1]),
            ]
        )
    err = info.value
    assert err.sqlstate == "23514"  # check_violation
    assert err.statement_index == 2
    import psycopg.errors

    assert err.pg_error_class is psycopg.errors.CheckViolation
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]


async def test_batch_returns_rows_per_statement(lax_db: Database, table: str) -> None:
    """Each statement's rows and row count come back in order."""
    res = await lax_db.batch(
        [
            Statement(sql=f"INSERT INTO {table}(body) VALUES ('x'), ('y')"),
            (f"UPDATE {table} SET n = %s WHERE body = %s", [5, "x"]),
            f"SELECT body, n FROM {table} ORDER BY body",
        ]
    )
    assert [s.rowcount for s in res.statements] == [2, 1, 2]
    assert res.statements[2].columns == ("body", "n")
    assert res.rows == [("x", 5), ("y", None)]


async def test_unique_violation_maps_to_psycopg_class(lax_db: Database, table: str) -> None:
    """A unique violation surfaces as WriteRejectedError with SQLSTATE 23505."""
    await lax_db.execute(f"INSERT INTO {table}(body) VALUES ('dup')")
    with pytest.raises(WriteRejectedError) as info:
        await lax_db.execute(f"INSERT INTO {table}(body) VALUES ('dup')")
    assert info.value.sqlstate == "23505"
    assert "duplicate key" in str(info.value)


async def test_no_worker_fails_fast(stack: Any, buses: Any) -> None:
    """With no worker on the subject, the caller gets NoWorkerError naming syd in < 1 s."""
    settings = settings_for(stack, "lax", prefix=f"nobody{uuid.uuid4().hex[:8]}")
    async with Database(settings) as db:
        t0 = time.monotonic()
        with pytest.raises(NoWorkerError) as info:
            await db.execute("SELECT 1")
        elapsed = time.monotonic() - t0
    assert elapsed < 1.0
    assert info.value.region == "syd"
    assert "syd" in str(info.value)


@asynccontextmanager
async def _worker_of_another_make(
    stack: Any, prefix: str, answer: Callable[[Any], Awaitable[None]]
) -> AsyncIterator[None]:
    """Something other than a bus worker serving ``<prefix>.write`` in syd with ``answer``."""
    responder = await nats.connect(stack.nats_url("syd"))
    try:
        await responder.subscribe(f"{prefix}.write", queue="writebus-workers", cb=answer)
        await responder.flush()
        yield
    finally:
        await responder.close()


async def test_an_unreadable_reply_is_an_unknown_outcome(stack: Any, buses: Any) -> None:
    """Something on the write subject answers with bytes no reply decodes from: the request
    was delivered and may have run, so the caller hears "unknown" with the id to resend
    under -- never "not applied"."""
    prefix = f"garbled{uuid.uuid4().hex[:8]}"
    seen: list[str] = []

    async def garble(msg: Any) -> None:
        seen.append(msg.subject)
        await msg.respond(b"\xc1 not a reply")

    async with _worker_of_another_make(stack, prefix, garble):
        async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
            with pytest.raises(OutcomeUnknownError) as info:
                await db.execute("SELECT 1", request_id="garbled-1", rpc_timeout=1.0)
    assert info.value.request_id == "garbled-1" and "could not be read" in str(info.value)
    assert seen and set(seen) == {f"{prefix}.write"}


async def test_a_committed_reply_without_a_position_is_not_taken_as_replicated(
    stack: Any, buses: Any
) -> None:
    """A worker of another make answers "ok" with no LSN: the caller cannot wait for its
    replica, so it hears that the write committed and that the wait could not run --
    rather than a result that reads as replicated when the replica may not have it."""
    prefix = f"nolsn{uuid.uuid4().hex[:8]}"

    async def answer(msg: Any) -> None:
        req = msgpack.unpackb(msg.data)
        reply = {"ok": True, "id": req["id"], "results": []}
        if req["id"].startswith("text-"):
            reply["lsn"] = "0/1"  # the text alone: the client reads it (replayed long ago)
        await msg.respond(msgpack.packb(reply))

    async with _worker_of_another_make(stack, prefix, answer):
        async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
            with pytest.raises(TrackerError) as info:
                await db.execute("SELECT 1", request_id="no-lsn-1", rpc_timeout=1.0)
            unwaited = await db.execute(
                "SELECT 1", request_id="no-lsn-2", rpc_timeout=1.0, await_replication=False
            )
            text_only = await db.execute("SELECT 1", request_id="text-1", rpc_timeout=1.0)
    assert info.value.outcome is Outcome.APPLIED
    assert "no-lsn-1" in str(info.value) and "no LSN" in str(info.value)
    assert unwaited.lsn is None and not unwaited.replicated  # not asked to wait: as before
    assert text_only.lsn == 1 and text_only.replicated


async def test_a_results_request_id_is_the_one_its_write_was_recorded_under(
    lax_db: Database, syd_db: Database, stack: Any, table: str
) -> None:
    """Through the bus and directly in the primary region, a result names its request id --
    the client's own when the caller gave none -- and that is the id the primary recorded:
    the one to send the write again under after an unknown outcome."""
    insert = f"INSERT INTO {table}(body) VALUES (%s)"
    given = f"job-{uuid.uuid4().hex}"
    results = [
        await lax_db.execute(insert, ["bus, made"]),
        await lax_db.execute(insert, ["bus, given"], request_id=given),
        await syd_db.execute(insert, ["direct, made"]),
        await syd_db.execute(insert, ["direct, given"], request_id=given + "-d"),
    ]
    ids = [r.request_id for r in results]
    assert [r.via_bus for r in results] == [True, True, False, False]
    assert ids[1] == given and ids[3] == given + "-d"
    assert ids[0] and ids[2] and len(set(ids)) == 4
    recorded = primary_rows(stack, "SELECT id FROM writebus.applied WHERE id = ANY(%s)", [ids])
    assert sorted(r[0] for r in recorded) == sorted(ids)


async def test_a_write_whose_replay_wait_cannot_run_reports_it_committed(
    stack: Any, buses: Any, table: str
) -> None:
    """The tracker is gone (closed under the Database) when the reply comes back: the write
    committed, so the error says applied and where, never leaving the outcome open."""
    nc = await nats.connect(stack.nats_url("lax"))  # a tracker of its own, not the session's
    try:
        async with Database(settings_for(stack, "lax"), nats=nc) as db:
            assert db.tracker is not None
            await db.tracker.close()
            with pytest.raises(TrackerError) as info:
                await db.execute(f"INSERT INTO {table}(body) VALUES ('untracked')")
    finally:
        await nc.close()
    assert info.value.outcome is Outcome.APPLIED and "committed at" in str(info.value)
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(1,)]


async def test_call_procedure_and_read_back(lax_db: Database, table: str) -> None:
    """call() runs a procedure on the primary and returns after local replay (rpc_and_wait)."""
    new_id = await lax_db.call("add_note", table, "from-proc")
    assert await lax_db.fetchval(f"SELECT body FROM {table} WHERE id = %s", [new_id]) == \
        "from-proc"


async def test_unknown_procedure_is_a_clear_error(lax_db: Database) -> None:
    """An unregistered procedure name is reported, listing what is registered."""
    with pytest.raises(ProcedureError, match="unknown procedure 'nope'.*add_note"):
        await lax_db.call("nope")


async def test_procedure_exception_is_reported(lax_db: Database) -> None:
    """A procedure raising a Python error gives a procedure error with its message."""
    with pytest.raises(ProcedureError, match="boom from a procedure"):
        await lax_db.call("boom")


async def test_rpc_region_runs_in_that_region(lax_db: Database, table: str) -> None:
    """rpc_region runs on the named region's database; rpc_primary on the primary."""
    assert await lax_db.rpc_region("lax", "whereami") == {"in_recovery": True}
    assert await lax_db.rpc_region("syd", "whereami") == {"in_recovery": False}
    assert await lax_db.rpc_primary("whereami") == {"in_recovery": False}
    with pytest.raises(WriteRejectedError) as info:  # a standby cannot write
        await lax_db.rpc_region("lax", "add_note", table, "x")
    assert info.value.sqlstate == "25006"


async def test_malformed_request_gets_error_and_worker_keeps_serving(
    stack: Any, buses: Any, table: str
) -> None:
    """Garbage bytes get a protocol error reply; the next valid request succeeds."""
    nc = await nats.connect(stack.nats_url("lax"))
    try:
        for garbage in (b"\xc1\xff\x00", b"not msgpack", msgpack.packb([1, 2, 3]), b""):
            msg = await nc.request("writebus.write", garbage, timeout=5)
            reply = msgpack.unpackb(msg.data)
            assert reply["ok"] is False and reply["error"]["kind"] == "protocol"
        good = {"id": uuid.uuid4().hex, "statements": [
            {"sql": f"INSERT INTO {table}(body) VALUES (%s)", "params": ["after-garbage"]}]}
        msg = await nc.request("writebus.write", msgpack.packb(good), timeout=5)
        assert msgpack.unpackb(msg.data)["ok"] is True
    finally:
        await nc.close()


async def test_plain_msgpack_client(stack: Any, buses: Any, table: str) -> None:
    """A peer using only a msgpack library (as another language would) gets a full reply."""
    nc = await nats.connect(stack.nats_url("lax"))
    try:
        req = {"v": 1, "id": "plain-" + uuid.uuid4().hex, "statements": [
            {"sql": f"INSERT INTO {table}(body) VALUES (%s) RETURNING id, body",
             "params": ["plain"]}]}
        msg = await nc.request("writebus.write", msgpack.packb(req), timeout=5)
        reply = msgpack.unpackb(msg.data)
    finally:
        await nc.close()
    assert reply["ok"] is True and reply["error"] is None and reply["id"] == req["id"]
    assert reply["results"][0]["columns"] == ["id", "body"]
    assert reply["results"][0]["rows"][0][1] == "plain"
    hi, lo = reply["lsn"].split("/")
    assert reply["lsn_int"] == (int(hi, 16) << 32) | int(lo, 16)
    assert reply["region"] == "syd"


async def test_json_request_gets_json_reply(stack: Any, buses: Any, table: str) -> None:
    """A JSON request (by header) is answered in JSON."""
    import json

    nc = await nats.connect(stack.nats_url("lax"))
    try:
        req = {"id": uuid.uuid4().hex, "procedure": "add_note", "args": [table, "json"]}
        msg = await nc.request("writebus.write", json.dumps(req).encode(), timeout=5,
                               headers={"Content-Type": "application/json"})
    finally:
        await nc.close()
    reply = json.loads(msg.data)
    assert reply["ok"] is True and isinstance(reply["value"], int)


async def test_a_duplicate_too_large_to_send_says_it_was_applied(
    stack: Any, buses: Any, table: str
) -> None:
    """A result that fit as msgpack, asked for again under its id in JSON (base64 makes its
    bytes a third larger, past NATS' max payload), cannot be sent: the answer is ``unknown``
    with detail ResultNotSent, not retryable, with the write's position -- it was a "limit"
    error, whose meaning is that nothing was applied."""
    import json

    import msgpack as mp

    nc = await nats.connect(stack.nats_url("lax"))
    try:
        size = int(nc.max_payload * 0.85)
        req = {"id": uuid.uuid4().hex, "procedure": "blob", "args": [table, size]}
        first = mp.unpackb((await nc.request("writebus.write", mp.packb(req), timeout=10)).data)
        msg = await nc.request("writebus.write", json.dumps(req).encode(), timeout=10,
                               headers={"Content-Type": "application/json"})  # fmt: skip
    finally:
        await nc.close()
    assert first["ok"] is True and len(first["value"]) == size
    again = json.loads(msg.data)
    assert again["ok"] is False and again["error"]["kind"] == "unknown"
    assert again["error"]["detail"] == "ResultNotSent" and again["error"]["retryable"] is False
    assert again["lsn_int"] >= first["lsn_int"]
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(1,)]


async def test_repeated_request_id_is_applied_once(lax_db: Database, stack: Any,
                                                   table: str) -> None:
    """Sending the same request id twice applies the write once and returns the same result."""
    rid = uuid.uuid4().hex
    stmts = [(f"INSERT INTO {table}(body) VALUES (%s) RETURNING id", ["once"])]
    first = await lax_db.batch(stmts, request_id=rid)
    second = await lax_db.batch(stmts, request_id=rid)
    assert not first.duplicate and second.duplicate
    assert second.rows == first.rows
    assert second.lsn is not None and first.lsn is not None and second.lsn >= first.lsn
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(1,)]


async def test_timed_out_and_cancelled_waits_leave_no_waiter(lax_db: Database) -> None:
    """A replication wait that times out or is cancelled leaves the tracker empty."""
    tracker = lax_db.tracker
    assert tracker is not None
    far = (tracker.replayed or 0) + (1 << 40)
    with pytest.raises(ReplicationTimeoutError) as info:
        await lax_db.wait_for_lsn(far, timeout=0.2)
    assert info.value.lsn == far and info.value.committed
    tasks = [asyncio.create_task(lax_db.wait_for_lsn(far + i, timeout=30)) for i in range(500)]
    await asyncio.sleep(0.05)
    assert tracker.waiting == 500
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tracker.waiting == 0 and tracker.heap_size == 0


async def test_concurrent_writers(lax_db: Database, table: str) -> None:
    """Many concurrent writes from lax all commit and are all readable locally after return."""

    async def one(i: int) -> bool:
        res = await lax_db.execute(f"INSERT INTO {table}(body) VALUES (%s) RETURNING id",
                                   [f"c{i}"])
        row = await lax_db.fetchrow(f"SELECT 1 FROM {table} WHERE id = %s", [res.rows[0][0]])
        return row is not None

    results = await asyncio.gather(*(one(i) for i in range(64)))
    assert all(results)


async def test_replica_stopped_gives_replication_timeout(
    lax_db: Database, stack: Any, table: str
) -> None:
    """With the replica down the write still commits; the wait ends with a timeout carrying
    the LSN; after a restart waits succeed again."""
    stack.replica.stop("fast")
    try:
        t0 = time.monotonic()
        with pytest.raises(ReplicationTimeoutError) as info:
            await lax_db.execute(f"INSERT INTO {table}(body) VALUES ('while-down')",
                                 replication_timeout=1.0)
        elapsed = time.monotonic() - t0
        assert info.value.committed and info.value.lsn > 0
        assert 1.0 <= elapsed < 1.5
        assert primary_rows(stack, f"SELECT count(*) FROM {table} WHERE body='while-down'") \
            == [(1,)]
        assert lax_db.tracker is not None and lax_db.tracker.waiting == 0
    finally:
        stack.replica.start()
    res = await lax_db.execute(f"INSERT INTO {table}(body) VALUES ('after') RETURNING id",
                               replication_timeout=15)
    assert await lax_db.fetchval(f"SELECT body FROM {table} WHERE id = %s",
                                 [res.rows[0][0]]) == "after"


async def test_racing_retries_apply_once(lax_db: Database, stack: Any, table: str) -> None:
    """Copies of one request id sent at once: the claim makes the copies wait for the first;
    all succeed with the same rows, exactly one applied -- even though a second application
    would hit the table's unique key."""
    rid = uuid.uuid4().hex
    stmts = [(f"INSERT INTO {table}(body) VALUES (%s) RETURNING id", ["raced"]),
             ("SELECT pg_sleep(0.2)", None)]
    results = await asyncio.gather(*(lax_db.batch(stmts, request_id=rid) for _ in range(4)))
    assert sum(not r.duplicate for r in results) == 1
    assert len({tuple(r.statements[0].rows) for r in results}) == 1
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(1,)]


async def test_failing_statement_index_in_a_long_batch(lax_db: Database, table: str) -> None:
    """The error names the statement that failed, wherever it sits in the batch."""
    stmts: list[Any] = [(f"INSERT INTO {table}(body) VALUES (%s)", [f"b{i}"]) for i in range(7)]
    stmts.insert(5, f"INSERT INTO {table}(body) VALUES ('b1')")  # duplicate key at index 5
    with pytest.raises(WriteRejectedError) as info:
        await lax_db.batch(stmts)
    assert info.value.statement_index == 5 and info.value.sqlstate == "23505"
    assert await lax_db.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_rpc_primary_is_not_resent_after_a_slow_attempt(lax_db: Database, stack: Any,
                                                               table: str) -> None:
    """rpc_primary has no exactly-once record, so a procedure slower than one retry attempt
    runs once: the call waits for it instead of sending it again."""
    new_id = await lax_db.rpc_primary("sleep_then_add", table, "slow-rpc", 2.5, timeout=6)
    assert isinstance(new_id, int)
    assert primary_rows(stack, f"SELECT count(*) FROM {table} WHERE body = 'slow-rpc'") == [(1,)]


async def test_an_rpc_of_unknown_outcome_says_calling_again_runs_it_again(
    lax_db: Database, stack: Any, table: str
) -> None:
    """An rpc_primary call that outlives its timeout is unknown, and -- as nothing records it
    for exactly-once -- not retryable, without the "send it again with request_id" advice
    that would run it twice. It runs to the end on the primary."""
    with pytest.raises(UnrecordedOutcomeError) as info:
        await lax_db.rpc_primary("sleep_then_add", table, "unknown-rpc", 1.5, timeout=0.5)
    err = info.value
    assert isinstance(err, OutcomeUnknownError) and err.outcome is Outcome.UNKNOWN
    assert not err.retryable and "request_id" not in str(err) and "runs it again" in str(err)
    deadline = time.monotonic() + 10
    while primary_rows(stack, f"SELECT count(*) FROM {table}") != [(1,)]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_an_rpc_to_a_name_that_is_no_region_is_not_sent(lax_db: Database) -> None:
    """A region that cannot name a NATS subject is refused before sending, typed and not
    applied (it was a bare nats.errors.BadSubjectError)."""
    for bad in ("lax syd", "lax\n", "lax.*", ""):
        with pytest.raises(ProtocolError) as info:
            await lax_db.rpc_region(bad, "whereami")
        assert info.value.outcome is Outcome.NOT_APPLIED


async def test_an_rpc_on_a_database_not_open_was_not_sent(stack: Any) -> None:
    db = Database(settings_for(stack, "lax"))
    with pytest.raises(WriteBusError) as info:
        await db.rpc_primary("whereami")
    assert info.value.outcome is Outcome.NOT_APPLIED


async def test_primary_region_call_runs_directly_with_the_configured_registry(
    stack: Any, buses: Any, table: str
) -> None:
    """In the primary region call() runs the procedure itself, from WRITEBUS_PROCEDURES when no
    registry is passed -- never over the bus -- and needs no replica wait."""
    async with Database(settings_for(stack, "syd", procedures=PROCEDURES)) as db:
        res = await db.call_result("add_note", table, "syd-direct")
        assert not res.via_bus and not res.replicated and res.lsn is not None
        assert await db.fetchval(f"SELECT body FROM {table} WHERE id = %s", [res.value]) == \
            "syd-direct"


_COMMIT_LOG = """
CREATE TABLE {t} (id bigserial PRIMARY KEY, body text);
CREATE TABLE {t}_log (setting text);
CREATE FUNCTION {t}_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {t}_log VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER {t}_at_commit AFTER INSERT ON {t}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {t}_seen();
"""


@pytest.mark.parametrize("server_default", ["on", "off"])
@pytest.mark.parametrize(("scope", "value"), [("session", "off"), ("local", "off"),
                                              ("local", "remote_apply")])  # fmt: skip
async def test_a_procedure_cannot_commit_with_synchronous_commit_off(
    stack: Any, buses: Any, scope: str, value: str, server_default: str
) -> None:
    """A procedure's SET synchronous_commit = off would make its COMMIT return before the
    WAL is flushed (the position read after it could precede it: a stale read of the write)
    and, set for the session, every later commit on that pooled connection. At COMMIT (a
    deferred trigger records the setting) it is the session's own again -- 'on' stays 'on',
    a default of 'off' is 'local' as when the connection opened -- and so it stays for the
    next use of the connection (here the only one). A stronger setting is left alone."""
    t = f"sc_{uuid.uuid4().hex[:10]}"
    stack.primary.execute(_COMMIT_LOG.format(t=t))
    url = make_conninfo(stack.primary.url, options=f"-c synchronous_commit={server_default}")
    settings = settings_for(stack, "syd", procedures=PROCEDURES, database_url=url)
    async with Database(settings, max_size=1) as db:
        before = await db.fetchval("SELECT current_setting('synchronous_commit')")
        assert before == ("on" if server_default == "on" else "local")
        assert await db.call("weakens_commit", t, scope, scope, value) == value
        at_commit = await db.fetchval(f"SELECT setting FROM {t}_log")
        assert at_commit == (value if value != "off" else before)
        assert await db.fetchval("SELECT current_setting('synchronous_commit')") == before


@pytest.mark.parametrize("scope", ["transaction", "session"])
@pytest.mark.parametrize("region", ["syd", "lax"])
async def test_statements_cannot_commit_with_synchronous_commit_off(
    stack: Any, buses: Any, region: str, scope: str
) -> None:
    """A statement that turns synchronous_commit off where validation cannot see it -- in a
    function it calls -- does not make the write's COMMIT asynchronous (its flush position
    could precede the commit, and a crash lose the answered write): at COMMIT (a deferred
    trigger records the setting) it is the session's own again, and (set for the session)
    so it stays for the next write on that pooled connection."""
    t = f"sc_{uuid.uuid4().hex[:10]}"
    local = "true" if scope == "transaction" else "false"
    stack.primary.execute(_COMMIT_LOG.format(t=t) + f"""
        CREATE FUNCTION {t}_fast() RETURNS text LANGUAGE sql
            AS $$ SELECT set_config('synchronous_commit', 'off', {local}) $$;""")
    stack.wait_replica_caught_up(10)
    async with Database(settings_for(stack, region), max_size=1) as db:
        for n in (1, 2):
            res = await db.batch([f"SELECT {t}_fast()" if n == 1 else "SELECT 'next'",
                                  f"INSERT INTO {t}(body) VALUES ('x')"])  # fmt: skip
            assert res.statements[0].rows == [("off",) if n == 1 else ("next",)]
        logged = await db.fetch(f"SELECT setting FROM {t}_log")
        assert [r[0] for r in logged] == ["on", "on"]


async def test_a_resend_of_an_applied_call_is_answered_after_its_procedure_went(
    stack: Any, buses: Any, table: str
) -> None:
    """A call applied under an id, resent after a deploy dropped the procedure: answered from
    the record, duplicate, not "unknown procedure, nothing applied"."""
    rid = uuid.uuid4().hex
    async with Database(settings_for(stack, "syd", procedures=PROCEDURES)) as db:
        first = await db.call_result("add_note", table, "kept", request_id=rid)
    async with Database(settings_for(stack, "syd")) as db:  # no registry: nothing is known
        again = await db.call_result("add_note", table, "kept", request_id=rid)
        assert again.duplicate and again.value == first.value and again.lsn is not None
        with pytest.raises(ProcedureError):
            await db.call("add_note", table, "new")
    assert primary_rows(stack, f"SELECT body FROM {table}") == [("kept",)]


async def test_a_refusal_whose_lookup_cannot_run_is_unknown(stack: Any, buses: Any) -> None:
    """A call refused before its claim (no such procedure) whose id cannot be looked up --
    every pooled connection busy -- may be the resend of an applied write: its answer is
    unknown, not "not applied" (which would send the app to apply it again under a new id)."""
    async with Database(settings_for(stack, "syd"), max_size=1) as db:
        assert db.pool is not None
        async with db.pool.connection():  # the only connection, held
            with pytest.raises(OutcomeUnknownError) as info:
                await db.call("add_note", "t", "x", request_id=uuid.uuid4().hex,
                              rpc_timeout=5.0)  # fmt: skip
    assert info.value.outcome is Outcome.UNKNOWN


async def test_primary_region_call_without_a_registry_is_an_unknown_procedure(
    stack: Any, buses: Any
) -> None:
    """Without any registry in the primary region, call() fails as the bus would for a name it
    does not know: a ProcedureError naming the procedure, nothing applied."""
    async with Database(settings_for(stack, "syd")) as db:
        with pytest.raises(ProcedureError, match="unknown procedure 'add_note'") as info:
            await db.call("add_note", "t", "x")
    assert info.value.outcome == "not_applied"


async def test_procedure_that_swallows_a_db_error_is_rejected(lax_db: Database, stack: Any,
                                                              table: str) -> None:
    """A procedure that catches a database error and returns gets a rejected error (25P02);
    nothing runs inside its aborted transaction and nothing is applied."""
    with pytest.raises(WriteRejectedError) as info:
        await lax_db.call("swallow_error", table)
    assert info.value.sqlstate == "25P02"
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]


async def test_error_at_commit_is_rejected_with_sqlstate(lax_db: Database, table: str) -> None:
    """A deferred constraint broken at COMMIT is a rejected write with its SQLSTATE, not an
    internal error."""
    with pytest.raises(WriteRejectedError) as info:
        await lax_db.call("violate_at_commit", table)
    assert info.value.sqlstate == "23503"


async def test_copy_is_refused_in_every_region(
    lax_db: Database, syd_db: Database, stack: Any, table: str
) -> None:
    """A batch with a COPY is refused before anything runs, over the bus and directly: in the
    pipeline a batch is sent in psycopg fails it with no SQLSTATE, which read as a lost
    connection (retried on fresh connections, then "unavailable" for the whole group)."""
    for db in (lax_db, syd_db):
        with pytest.raises(ProtocolError, match="statement 1 is a COPY"):
            await db.batch([f"INSERT INTO {table}(body) VALUES ('x')", f"COPY {table} FROM STDIN"])
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]


async def test_transaction_control_statements_are_refused(lax_db: Database, stack: Any,
                                                          table: str) -> None:
    """A batch containing COMMIT is refused before anything runs."""
    with pytest.raises(ProtocolError, match="controls the transaction"):
        await lax_db.batch([f"INSERT INTO {table}(body) VALUES ('x')", "COMMIT",
                            f"INSERT INTO {table}(body) VALUES ('y')"])
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(0,)]
