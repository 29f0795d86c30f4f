"""Group commit on a real primary: many requests, one transaction, each answered on its own.

The cases call the server-side function every statement write goes through
(``run_statement_writes``) with hand-made groups, so each situation happens inside one group
for certain; the end-to-end test drives a bus worker with concurrent clients.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.support.pause import MARK, pause_before_marked
from tests.support.slots import metric
from tests.support.stack import deferred_child, primary_rows
from writebus.bus.execute import Job, Limits, run_request, run_statement_writes
from writebus.bus.group import Executed
from writebus.client.errors import (
    IdempotencyKeyReusedError,
    LimitError,
    Outcome,
    ProcedureError,
    ProtocolError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.procedures import Procedures
from writebus.client.protocol import JSON, Request, Statement


@pytest.fixture
def pool(worker_pool: AsyncConnectionPool[Any]) -> AsyncConnectionPool[Any]:
    """The worker-like pool on the primary (``worker_pool``)."""
    return worker_pool


def _insert(table: str, body: str, rid: str | None = None, n: int | None = None) -> Job:
    sql = f"INSERT INTO {table}(body, n) VALUES (%s, %s) RETURNING id, body"
    return Job(Request(id=rid or uuid.uuid4().hex, statements=[Statement(sql=sql, params=[body, n])]))


async def _run(pool: AsyncConnectionPool[Any], jobs: list[Job], **kw: Any) -> list[Any]:
    return await run_statement_writes(pool, jobs, limits=Limits(max_reply_bytes=64 * 1024), **kw)


def _bodies(stack: Any, table: str) -> list[str]:
    return sorted(r[0] for r in primary_rows(stack, f"SELECT body FROM {table}"))


async def test_a_group_commits_once_and_answers_each(
    stack: Any, pool: Any, table: str
) -> None:
    """Ten requests in one group: each gets its own rows, all share one commit LSN."""
    jobs = [_insert(table, f"g{i}") for i in range(10)]
    out = await _run(pool, jobs)
    assert all(isinstance(o, Executed) and not o.duplicate for o in out)
    assert [o.results[0].rows[0][1] for o in out] == [f"g{i}" for i in range(10)]
    assert len({o.lsn for o in out}) == 1 and out[0].lsn is not None
    assert _bodies(stack, table) == sorted(f"g{i}" for i in range(10))


async def test_a_clean_group_is_sent_once_without_savepoints(
    stack: Any, pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group with nothing unusual is answered by the first try (no savepoints): runs of the
    same statement go as one executemany, a different statement and a two-statement request
    in between break the runs, and every request still gets its own rows and rowcounts."""
    from writebus.bus import optimistic

    tries: list[bool] = []
    real = optimistic.run_optimistic

    async def spy(*args: Any, **kwargs: Any) -> Any:
        out = await real(*args, **kwargs)
        tries.append(out is not None)
        return out

    monkeypatch.setattr(optimistic, "run_optimistic", spy)
    other = Job(Request(id=uuid.uuid4().hex, statements=[
        Statement(sql=f"UPDATE {table} SET n = 7 WHERE body = %s", params=["a1"]),
    ]))  # fmt: skip
    two = Job(Request(id=uuid.uuid4().hex, statements=[
        Statement(sql=f"INSERT INTO {table}(body) VALUES ('t1')"),
        Statement(sql=f"SELECT count(*) FROM {table}"),
    ]))  # fmt: skip
    jobs = [_insert(table, "a0"), _insert(table, "a1"), other, _insert(table, "b0"),
            _insert(table, "b1"), _insert(table, "b2"), two, _insert(table, "c0")]  # fmt: skip
    assert [(r.start, r.stop, r.batched) for r in optimistic.plan_runs([j.req for j in jobs])] == [
        (0, 2, True), (2, 3, False), (3, 6, True), (6, 7, False), (7, 8, False)
    ]
    out = await _run(pool, jobs)
    assert tries == [True]
    assert all(isinstance(o, Executed) and not o.duplicate for o in out)
    inserted = [o.results[0].rows[0][1] for n, o in enumerate(out) if n not in (2, 6)]
    assert inserted == ["a0", "a1", "b0", "b1", "b2", "c0"]
    assert out[2].results[0].rowcount == 1 and out[2].results[0].rows is None
    assert out[6].results[0].rowcount == 1
    assert [list(r) for r in out[6].results[1].rows or ()] == [[6]]  # a0..b2 and t1
    assert len({o.lsn for o in out}) == 1
    # A repeat of one of them in the next group sends that group the careful way.
    again = await _run(pool, [jobs[3], _insert(table, "d0")])
    assert tries == [True, False]
    assert again[0].duplicate
    assert [list(r) for r in again[0].results[0].rows] == [list(r) for r in out[3].results[0].rows]
    assert isinstance(again[1], Executed) and not again[1].duplicate


async def test_a_failing_statement_in_the_middle_fails_alone(
    stack: Any, pool: Any, table: str
) -> None:
    """The middle request breaks a CHECK constraint: it alone is rejected (with its SQLSTATE
    and statement index); the requests before and after it commit."""
    jobs = [_insert(table, "a"), _insert(table, "bad", n=-1), _insert(table, "c")]
    a, bad, c = await _run(pool, jobs)
    assert isinstance(a, Executed) and isinstance(c, Executed)
    assert isinstance(bad, WriteRejectedError) and bad.sqlstate == "23514"
    assert bad.statement_index == 0
    assert _bodies(stack, table) == ["a", "c"]


async def test_duplicates_and_retries_inside_one_group(
    stack: Any, pool: Any, table: str
) -> None:
    """An id already applied is answered from the table; an id twice in one group runs once
    (the second is a duplicate); an applied id reused for another body is refused -- each
    without disturbing the others in the group."""
    done = uuid.uuid4().hex
    (first,) = await _run(pool, [_insert(table, "applied", rid=done)])
    assert isinstance(first, Executed)
    twice = uuid.uuid4().hex
    jobs = [
        _insert(table, "applied", rid=done),  # a retry of an applied request
        _insert(table, "fresh"),
        _insert(table, "twice", rid=twice),
        _insert(table, "twice", rid=twice),  # the same request twice in the group
        _insert(table, "other body", rid=done),  # the applied id, another request
    ]
    retry, fresh, t1, t2, reused = await _run(pool, jobs)
    assert isinstance(retry, Executed) and retry.duplicate
    assert [list(r) for r in retry.results[0].rows or []] == [
        list(r) for r in first.results[0].rows or []
    ]
    assert isinstance(fresh, Executed) and not fresh.duplicate
    assert isinstance(t1, Executed) and isinstance(t2, Executed)
    assert [t1.duplicate, t2.duplicate] == [False, True]
    assert isinstance(reused, IdempotencyKeyReusedError)
    assert _bodies(stack, table) == ["applied", "fresh", "twice"]


async def test_a_reply_too_large_fails_alone(stack: Any, pool: Any, table: str) -> None:
    """A request whose RETURNING rows would not fit in a reply is refused before COMMIT; the
    others in its group commit."""
    big = Job(
        Request(
            id=uuid.uuid4().hex,
            statements=[Statement(sql=f"INSERT INTO {table}(body) SELECT 'x' || g || repeat('y', "
                                      "200) FROM generate_series(1, 1000) g RETURNING body")],
        )
    )
    ok1, too_big, ok2 = await _run(pool, [_insert(table, "p"), big, _insert(table, "q")])
    assert isinstance(too_big, LimitError)
    assert isinstance(ok1, Executed) and isinstance(ok2, Executed)
    assert _bodies(stack, table) == ["p", "q"]


async def test_a_map_with_integer_keys_fails_alone(stack: Any, pool: Any, table: str) -> None:
    """A parameter map with integer keys (valid msgpack) cannot be sorted for the request's
    digest: it is digested as it came, and refused as a parameter, alone -- the digest's
    TypeError made every request of its group "unknown"."""
    odd = Job(Request(id=uuid.uuid4().hex, statements=[
        Statement(sql=f"INSERT INTO {table}(body) VALUES (%s)", params=[{1: 2}])]))  # fmt: skip
    ok1, refused, ok2 = await _run(pool, [_insert(table, "p"), odd, _insert(table, "q")])
    assert isinstance(refused, WriteBusError) and refused.outcome is Outcome.NOT_APPLIED
    assert isinstance(ok1, Executed) and isinstance(ok2, Executed)
    assert _bodies(stack, table) == ["p", "q"]


async def test_a_commit_failure_gives_each_its_own_answer(
    stack: Any, pool: Any, table: str
) -> None:
    """A deferred constraint fails at COMMIT: the group is not guessed at -- each request runs
    alone again, so only the guilty one is rejected (23503) and the others commit once."""
    child = deferred_child(stack, table)
    guilty = Job(Request(id=uuid.uuid4().hex,
                         statements=[Statement(sql=f"INSERT INTO {child} VALUES (42)")]))
    a, bad, b = await _run(pool, [_insert(table, "x"), guilty, _insert(table, "z")])
    assert isinstance(bad, WriteRejectedError) and bad.sqlstate == "23503"
    assert isinstance(a, Executed) and isinstance(b, Executed)
    assert _bodies(stack, table) == ["x", "z"]


async def test_a_group_cut_by_a_terminated_backend_applies_once(
    stack: Any, pool: Any, table: str
) -> None:
    """The primary's backend is terminated while the group runs: the group runs again on a
    fresh connection, and every request is answered and applied exactly once."""
    slow = Job(Request(id=uuid.uuid4().hex, statements=[
        Statement(sql=f"INSERT INTO {table}(body) SELECT 'slow' FROM pg_sleep(0.5) /* cut-me */")
    ]))
    jobs = [_insert(table, "before"), slow, _insert(table, "after")]
    run = asyncio.create_task(_run(pool, jobs))
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while not conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE state = 'active' AND strpos(query, 'cut-me') > 0 AND pid <> pg_backend_pid()"
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    out = await run
    assert all(isinstance(o, Executed) for o in out), out
    assert _bodies(stack, table) == ["after", "before", "slow"]


async def test_nothing_commits_when_the_node_may_not(stack: Any, pool: Any, table: str) -> None:
    """A fenced node (may_commit gives a reason) commits nothing: every request of the group is
    answered 'unavailable' (not applied)."""
    out = await _run(pool, [_insert(table, "f1"), _insert(table, "f2")],
                     may_commit=lambda: "fenced: test")
    assert all(isinstance(o, UnavailableError) for o in out)
    assert _bodies(stack, table) == []


async def test_a_request_past_its_deadline_is_not_started(
    stack: Any, pool: Any, table: str
) -> None:
    """A request whose caller stopped waiting is answered 'not run' and left out of the
    group; the rest commit."""
    late = _insert(table, "late")
    late = Job(late.req, late.encoding, deadline=time.monotonic() - 1)
    on_time, dropped = await _run(pool, [_insert(table, "on time"), late])
    assert isinstance(on_time, Executed)
    assert isinstance(dropped, WriteBusError) and "not run" in str(dropped)
    assert _bodies(stack, table) == ["on time"]


async def test_a_busy_worker_commits_in_groups(stack: Any, table: str) -> None:
    """200 concurrent writes from lax through one bus worker: every write is acknowledged and
    on the primary once, and the worker's metrics show groups of more than one request (while
    a lone write, sent alone, is a group of one)."""
    from tests.support.stack import http_url, settings_for, start_bus
    from writebus import Database

    prefix = f"grp{uuid.uuid4().hex[:8]}"
    bus = start_bus(stack, "syd", log_name=f"bus-{prefix}", WRITEBUS_PREFIX=prefix,
                    WRITEBUS_REQUEST_LOG_LEVEL="debug")
    try:
        async with Database(settings_for(stack, "lax", prefix=prefix), max_size=2) as db:
            await db.execute(f"INSERT INTO {table}(body) VALUES ('alone')")
            single = metric(http_url(bus), "writebus_group_requests_total")
            assert single == metric(http_url(bus), "writebus_group_commits_total") == 1
            results = await asyncio.gather(*(
                db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [f"c{i}"],
                           await_replication=False)
                for i in range(200)
            ))
        assert all(not r.duplicate for r in results)
        requests = metric(http_url(bus), "writebus_group_requests_total")
        groups = metric(http_url(bus), "writebus_group_commits_total")
        assert requests == 201 and groups < requests  # some groups held several writes
        assert len(_bodies(stack, table)) == 201
    finally:
        bus.stop(10)


async def test_slow_writes_run_side_by_side_not_in_one_group(stack: Any, table: str) -> None:
    """Twelve writes that each spend 0.4 s in their transaction, through a worker with two
    committer slots: grouping them would answer the last after seconds, one slot after
    another. Stalled groups give their slots up, so most of them run on the primary at the
    same moment, and every one is acknowledged once."""
    from tests.support.stack import settings_for, start_bus
    from writebus import Database

    prefix = f"slow{uuid.uuid4().hex[:8]}"
    bus = start_bus(stack, "syd", log_name=f"bus-{prefix}", WRITEBUS_PREFIX=prefix,
                    WRITEBUS_GROUP_CONNECTIONS="2", WRITEBUS_REQUEST_LOG_LEVEL="debug")
    sql = f"INSERT INTO {table}(body) SELECT %s FROM pg_sleep(0.4)"
    most = 0
    try:
        async with Database(settings_for(stack, "lax", prefix=prefix), max_size=2) as db:
            writes = asyncio.gather(*(
                db.execute(sql, [f"slow{i}"], await_replication=False) for i in range(12)
            ))
            async with await psycopg.AsyncConnection.connect(stack.primary.url,
                                                             autocommit=True) as watch:
                while not writes.done():
                    cur = await watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        "AND query LIKE '%%pg_sleep(0.4)%%' AND pid <> pg_backend_pid()"
                    )
                    row = await cur.fetchone()
                    most = max(most, row[0] if row else 0)
                    await asyncio.sleep(0.02)
            results = await writes
        assert len(results) == 12 and not any(r.duplicate for r in results)
        assert most >= 8, f"at most {most} slow writes ran at once"
        assert sorted(_bodies(stack, table)) == sorted(f"slow{i}" for i in range(12))
    finally:
        bus.stop(10)


def most_at_once(spans: list[tuple[Any, Any]]) -> int:
    """The most ``(start, end)`` spans that cover one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def test_writes_under_the_budget_do_not_queue_behind_one_slot(
    stack: Any, table: str
) -> None:
    """Writes that each spend 30 ms in their transaction -- under the committer's 50 ms
    budget, so their groups never stall -- through a worker with one committer slot: a 50 ms
    group holds one of them, so they start on other connections at once instead of one after
    another (12 x 30 ms). The primary's own clocks show the transactions overlapping; the
    worker's metrics count the groups started past the slot."""
    from tests.support.stack import http_url, settings_for, start_bus
    from writebus import Database

    prefix = f"mid{uuid.uuid4().hex[:8]}"
    bus = start_bus(stack, "syd", log_name=f"bus-{prefix}", WRITEBUS_PREFIX=prefix,
                    WRITEBUS_GROUP_CONNECTIONS="1", WRITEBUS_REQUEST_LOG_LEVEL="debug")
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN began timestamptz, "
                     "ADD COLUMN ended timestamptz")
    # now(): the group's transaction began; clock_timestamp() after the sleep: it is ending.
    mid = f"INSERT INTO {table}(body, began, ended) SELECT %s, now(), clock_timestamp() " \
          "FROM pg_sleep(0.03)"
    try:
        async with Database(settings_for(stack, "lax", prefix=prefix), max_size=2) as db:
            # Slow writes first: they stall, run side by side and leave the worker's pool
            # with a dozen open connections (opening them is not what is measured).
            await asyncio.gather(*(
                db.execute(f"INSERT INTO {table}(body) SELECT %s FROM pg_sleep(0.3)",
                           [f"warm{i}"], await_replication=False)
                for i in range(12)
            ))
            await asyncio.gather(*(
                db.execute(mid, [f"mid{i}"], await_replication=False) for i in range(12)
            ))
        spans = primary_rows(stack, f"SELECT began, ended FROM {table} WHERE body LIKE 'mid%'")
        assert len(spans) == 12
        assert most_at_once(spans) >= 5, f"at most {most_at_once(spans)} ran at once"
        past = [metric(http_url(bus), "writebus_group_past_slots_total", reason=reason)
                for reason in ("alone", "overdue")]  # fmt: skip
        assert sum(past) >= 5, past
    finally:
        bus.stop(10)


async def test_a_worker_keeps_one_group_in_flight_while_the_cpu_is_busy(
    stack: Any, table: str
) -> None:
    """A worker with two committer slots (the default) shows both open on an idle machine;
    with every core spinning it closes the second (``writebus_group_slots`` 1) and still
    answers writes; once the spinning stops it reopens it."""
    import os
    import subprocess
    import sys

    from tests.support.slots import slots_become, write_twenty
    from tests.support.stack import start_bus
    from writebus.bus import cgroup

    cores = os.cpu_count() or 2
    group = cgroup.find()
    limit = group.cores() if group is not None else None
    if len(os.sched_getaffinity(0)) < cores and (limit is None or limit >= cores):
        # Pinned to fewer cores than /proc/stat counts, and no control group says so: spinning
        # cannot fill the machine, and nothing reads the pinned cores as busy.
        pytest.skip("fewer cores usable here than /proc/stat counts, and no cgroup limit")
    prefix = f"slots{uuid.uuid4().hex[:8]}"
    bus = start_bus(stack, "syd", log_name=f"bus-{prefix}", WRITEBUS_PREFIX=prefix,
                    WRITEBUS_REQUEST_LOG_LEVEL="debug")
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        await slots_become(bus, 2)
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(cores)]  # fmt: skip
        await slots_become(bus, 1)
        assert await write_twenty(stack, prefix, table, "busy") == 20
        assert len(_bodies(stack, table)) == 20
        for p in spinners:
            p.kill()
            p.wait()
        await slots_become(bus, 2)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
        bus.stop(10)



async def test_an_error_met_while_the_group_is_still_being_sent(
    stack: Any, pool: Any, table: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """psycopg reads results while it sends a pipeline, so a statement's error can surface
    from a later request's send, and psycopg then reports the commands after it as
    ``PipelineAborted`` (an OperationalError with no SQLSTATE, like a lost connection). It is
    still the failed request's rejection, with its SQLSTATE -- 22P02, a DataError, a class
    psycopg also raises for values it refuses before sending -- and the others commit on the
    same connection: no retry on a fresh one, no later request blamed."""
    from writebus.bus import execute

    paused = pause_before_marked(monkeypatch)
    retried: list[str] = []
    monkeypatch.setattr(execute.log, "info", lambda event, **_: retried.append(event))
    # It fails 50 ms in, at run time: long after the careful way's next SAVEPOINT went out, so
    # the error meets b's own send (the statement psycopg once took for refusing to send).
    bad_sql = (
        f"INSERT INTO {table}(body, n) SELECT 'bad', (s::text || 'x')::int FROM pg_sleep(0.05) s"
    )
    slow_sql = f"INSERT INTO {table}(body) VALUES (%s) {MARK}"
    jobs = [
        _insert(table, "a"),
        Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=bad_sql)])),
        Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=slow_sql, params=["b"])])),
        _insert(table, "c"),
    ]
    a, bad, b, c = await _run(pool, jobs)
    # The error was waiting when b was sent, in the first try and in the careful way.
    assert paused[:2] == [True, True]
    assert isinstance(bad, WriteRejectedError) and bad.sqlstate == "22P02"
    assert bad.statement_index == 0
    assert all(isinstance(o, Executed) and not o.duplicate for o in (a, b, c))
    assert "execute.retry_on_fresh_connection" not in retried
    assert _bodies(stack, table) == ["a", "b", "c"]
    assert not [r for r in caplog.records if r.name.startswith("psycopg")]  # nothing ignored


async def test_a_request_psycopg_refuses_to_send_fails_alone(
    stack: Any, pool: Any, table: str
) -> None:
    """Parameters that do not fit the placeholders are refused by psycopg before anything is
    sent (a ProgrammingError with no SQLSTATE): that request alone is rejected, the others
    in the group commit."""
    refused_sql = f"INSERT INTO {table}(body, n) VALUES (%s, %s)"
    jobs = [
        _insert(table, "a"),
        Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=refused_sql, params=["b"])])),
        _insert(table, "c"),
    ]
    a, refused, c = await _run(pool, jobs)
    assert isinstance(refused, WriteRejectedError) and refused.sqlstate is None
    assert refused.statement_index == 0 and "placeholder" in str(refused)
    assert isinstance(a, Executed) and isinstance(c, Executed)
    assert _bodies(stack, table) == ["a", "c"]


async def test_a_result_the_record_cannot_store_fails_alone(
    stack: Any, pool: Any, table: str
) -> None:
    """JSON carries a number past 64 bits, the exactly-once record (msgpack) does not: a JSON
    request returning one is rejected before COMMIT, alone -- not failed at the record with
    the whole group, and not answered "unknown" -- and the others commit."""
    big_sql = (
        f"INSERT INTO {table}(body) VALUES ('big') "
        "RETURNING '{\"n\": 100000000000000000000}'::jsonb AS j"
    )
    jobs = [
        Job(_insert(table, "a").req, JSON),
        Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=big_sql)]), JSON),
        Job(_insert(table, "c").req, JSON),
    ]
    a, big, c = await _run(pool, jobs)
    assert isinstance(big, WriteRejectedError) and "recorded" in str(big)
    assert big.outcome is Outcome.NOT_APPLIED
    assert isinstance(a, Executed) and isinstance(c, Executed)
    assert _bodies(stack, table) == ["a", "c"]


async def test_a_procedure_value_the_record_cannot_store_applies_nothing(
    stack: Any, pool: Any, table: str
) -> None:
    """The same for a procedure's return value: a ProcedureError before COMMIT, nothing
    applied (its row is not there), instead of an untyped OverflowError from the record."""
    procs = Procedures()

    @procs.register
    async def add_and_return_a_big_number(conn: Any, table: str) -> int:
        await conn.execute(f"INSERT INTO {table}(body) VALUES ('proc')")
        return 2**70

    req = Request(id=uuid.uuid4().hex, procedure="add_and_return_a_big_number", args=[table])
    with pytest.raises(ProcedureError) as caught:
        await run_request(pool, req, procedures=procs, limits=Limits(), encoding=JSON)
    assert caught.value.outcome is Outcome.NOT_APPLIED and "recorded" in str(caught.value)
    assert _bodies(stack, table) == []


async def test_what_lasts_until_commit_keeps_its_request_out_of_groups(
    stack: Any, pool: Any, table: str
) -> None:
    """SET LOCAL, SET CONSTRAINTS and a temporary table last until COMMIT: in a group they
    would reach the requests after them in the same transaction (a time zone, a search_path,
    a table name). Such a request runs in a transaction of its own; a plain write still
    queues for a group. Settings that would outlast the transaction on the pooled connection
    are refused, nothing applied."""
    queued: list[str] = []  # the requests submitted to be grouped

    async def submit(job: Job, size: int) -> Executed | WriteBusError:
        if not job.alone:  # what the committer would group
            queued.append(job.req.id)
        (out,) = await _run(pool, [job])
        return out

    def req(rid: str, *sqls: str) -> Request:
        return Request(id=rid, statements=[Statement(sql=sql) for sql in sqls])

    def insert(tag: str) -> str:
        return f"INSERT INTO {table}(body) VALUES ('{tag} ' || current_setting('TimeZone'))"

    limits = Limits(max_reply_bytes=64 * 1024)
    for r in (req(f"tz-{uuid.uuid4().hex}", "SET LOCAL TimeZone = 'Pacific/Kiritimati'",
                  insert("tz")),
              req(f"dc-{uuid.uuid4().hex}", "/* x */ SET CONSTRAINTS ALL DEFERRED", insert("dc")),
              req(f"tt-{uuid.uuid4().hex}", "CREATE TEMP TABLE t1 (a int) ON COMMIT DROP"),
              req(f"pl-{uuid.uuid4().hex}", insert("pl"))):  # fmt: skip
        await run_request(pool, r, procedures=Procedures(), limits=limits, submit=submit)
    assert [rid.split("-")[0] for rid in queued] == ["pl"]
    bodies = _bodies(stack, table)
    assert "tz Pacific/Kiritimati" in bodies and len(bodies) == 3  # applied, alone
    assert [b for b in bodies if b.startswith("pl ")] != ["pl Pacific/Kiritimati"]
    for sql in ("SET search_path = elsewhere", "SET ROLE nobody", "RESET ALL", "DISCARD ALL",
                "PREPARE p AS SELECT 1", "LISTEN c", "CREATE TEMP TABLE t2 (a int)"):  # fmt: skip
        with pytest.raises(ProtocolError, match="outlast") as info:
            await run_request(pool, req(uuid.uuid4().hex, sql), procedures=Procedures(),
                              limits=limits, submit=submit)  # fmt: skip
        assert info.value.outcome is Outcome.NOT_APPLIED
    assert len(queued) == 1


async def test_a_resend_applied_while_the_first_try_rolled_back_is_not_applied_again(
    stack: Any, pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A primary-region write whose id the caller made claims it without a lookup (nobody
    can have applied it). When its first try was written out and rolled back (here: its
    results did not line up), the rollback released the id's lock, and a resend -- its
    caller having timed out -- could apply it meanwhile. The careful way then claimed it
    unseen again, skipped the lookup, and applied it a second time. It looks it up now."""
    from writebus.bus import group

    sql = f"INSERT INTO {table}(body) VALUES (%s) RETURNING id, %s"  # a bare int: 'int2' written
    def req(rid: str, body: str) -> Request:
        return Request(id=rid, statements=[Statement(sql=sql, params=[body, 7])])

    procs, limits = Procedures(), Limits(max_reply_bytes=64 * 1024)
    await run_request(pool, req(uuid.uuid4().hex, "proof"), procedures=procs, limits=limits)
    rid = uuid.uuid4().hex
    real_first_round = group._first_round

    async def resend_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(group, "_first_round", real_first_round)
        # The resend, on another connection, while the first try is between its two tries.
        done = await run_request(pool, req(rid, "twice?"), procedures=procs, limits=limits)
        assert not done.duplicate
        return await real_first_round(*args, **kwargs)

    monkeypatch.setattr(group, "_first_round", resend_first)
    first = await run_request(pool, req(rid, "twice?"), procedures=procs, limits=limits,
                              unseen=True)  # fmt: skip
    assert first.duplicate  # answered from the resend's record
    assert _bodies(stack, table) == ["proof", "twice?"]


async def test_a_resend_refused_before_sending_is_answered_from_its_record(
    stack: Any, pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resend of an applied write that psycopg now refuses before sending (here its
    parameters are made not to fit; in life, a rule new since the first try) is answered
    from the record the claim found -- a duplicate -- not "rejected, nothing applied", which
    would send the app to apply it again under a new id."""
    from writebus.bus import group, literals

    rid = uuid.uuid4().hex
    (first,) = await _run(pool, [_insert(table, "once", rid)])
    assert isinstance(first, Executed) and not first.duplicate
    literals.PROVEN.clear()  # the careful way, where the refusal is met
    monkeypatch.setattr(group, "bound", lambda stmt: [*stmt.params, "one too many"])
    (again,) = await _run(pool, [_insert(table, "once", rid)])
    assert isinstance(again, Executed) and again.duplicate
    assert _bodies(stack, table) == ["once"]
