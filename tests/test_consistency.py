"""Consistency beyond one call, on real servers: session tokens across processes, strong reads,
bounded staleness, and the middleware that carries tokens across HTTP requests.

Replay on the lax replica is paused (``pg_wal_replay_pause()``) where a test must show the
stale read it prevents: each test proves it can fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import nats
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.support.stack import REPO, settings_for
from writebus import (
    Database,
    ReplicationTimeoutError,
    StaleReadError,
    SyncDatabase,
    WritebusASGIMiddleware,
    WriteBusError,
    WritebusWSGIMiddleware,
    session,
)
from writebus.client.lsn import parse_lsn
from writebus.client.protocol import Reply, Request, decode, encode, encoding_of
from writebus.client.reads import ReadGate
from writebus.client.subjects import WORKER_QUEUE
from writebus.client.tokens import make_token, token_lsn


@contextlib.contextmanager
def replay_paused(stack: Any) -> Iterator[None]:
    """Pause WAL replay on the lax replica for the block (resumed whatever happens)."""
    with psycopg.connect(stack.replica.url, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")


def _resume(stack: Any) -> None:
    with psycopg.connect(stack.replica.url, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_resume()")


WRITER = """
import asyncio, sys
from writebus import Database, Settings

async def main():
    async with Database(Settings.from_env({env!r})) as db:
        for line in sys.stdin:
            res = await db.execute("INSERT INTO {table}(body) VALUES (%s) RETURNING id",
                                   [line.strip()], await_replication=False)
            print(res.rows[0][0], res.token, flush=True)

asyncio.run(main())
"""


@pytest.fixture
def writer(stack: Any, buses: Any, table: str) -> Iterator[subprocess.Popen[str]]:
    """Another process in lax that writes one note per line of stdin (without waiting for
    replication) and prints the new id and the write's token."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER.format(env=stack.env("lax"), table=table))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        yield proc
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(30)


def _write(proc: subprocess.Popen[str], body: str) -> tuple[int, str]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(body + "\n")
    proc.stdin.flush()
    note_id, token = proc.stdout.readline().split()
    return int(note_id), token


def test_tokens_are_short_url_and_cookie_safe() -> None:
    """A token is the format version and the LSN in hex; it round-trips."""
    token = make_token(0x305AAA0)
    assert token == "1.305aaa0" and token_lsn(token) == 0x305AAA0
    assert all(c.isalnum() or c == "." for c in token)


async def test_a_token_from_another_process_makes_its_write_visible(
    stack: Any, writer: subprocess.Popen[str], table: str
) -> None:
    """Another lax process writes without waiting and hands over its token; a read here with
    after=token sees the write every time (0 stale in 20). With replay paused the same read
    without the token does not see it -- the stale read the token prevents -- and the read
    with it waits until replay resumes."""
    async with Database(settings_for(stack, "lax")) as db:
        stale = 0
        for i in range(20):
            note_id, token = await asyncio.to_thread(_write, writer, f"tok{i}")
            row = await db.fetchrow(f"SELECT body FROM {table} WHERE id = %s", [note_id], after=token)
            stale += row is None
        assert stale == 0
        with replay_paused(stack):
            note_id, token = await asyncio.to_thread(_write, writer, "paused")
            plain = await db.fetchrow(f"SELECT body FROM {table} WHERE id = %s", [note_id])
            assert plain is None  # stale without the token
            with_token = asyncio.create_task(
                db.fetchrow(f"SELECT body FROM {table} WHERE id = %s", [note_id], after=token)
            )
            done, _ = await asyncio.wait({with_token}, timeout=0.5)
            assert not done  # it waits for replay instead of reading stale
            _resume(stack)
            assert await asyncio.wait_for(with_token, 10) == ("paused",)


async def test_strong_reads_see_writes_made_directly_on_the_primary(
    stack: Any, buses: Any, table: str
) -> None:
    """A write committed on the primary by another connection is always visible to a strong
    read from lax that starts after the write returned (0 stale in 20); with replay paused a
    plain read misses it and the strong read waits for it."""
    primary = await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True)
    try:
        async with Database(settings_for(stack, "lax")) as db:
            stale = 0
            for i in range(20):
                cur = await primary.execute(
                    f"INSERT INTO {table}(body) VALUES (%s) RETURNING id", [f"strong{i}"]
                )
                (note_id,) = await cur.fetchone()  # type: ignore[misc]
                row = await db.fetchrow(f"SELECT 1 FROM {table} WHERE id = %s", [note_id],
                                        consistency="strong")
                stale += row is None
            assert stale == 0
            with replay_paused(stack):
                cur = await primary.execute(f"INSERT INTO {table}(body) VALUES ('s') RETURNING id")
                (note_id,) = await cur.fetchone()  # type: ignore[misc]
                assert await db.fetchrow(f"SELECT 1 FROM {table} WHERE id = %s", [note_id]) is None
                strong = asyncio.create_task(
                    db.fetchrow(f"SELECT 1 FROM {table} WHERE id = %s", [note_id],
                                consistency="strong")
                )
                done, _ = await asyncio.wait({strong}, timeout=0.5)
                assert not done
                _resume(stack)
                assert await asyncio.wait_for(strong, 10) == (1,)
    finally:
        await primary.close()


async def test_strong_reads_ping_again_when_another_node_of_the_primary_region_answers(
    stack: Any, buses: Any, table: str
) -> None:
    """The primary region's other bus nodes (a standby's, one starting or fenced) answer
    pings in the same queue group, without the primary's flush position: a strong read
    failed whenever its ping reached one. It pings again, and reaches the primary's."""
    nc = await nats.connect(stack.nats_url("syd"))
    answered = 0

    async def standby(msg: Any) -> None:
        nonlocal answered
        answered += 1
        req = decode(msg.data, Request, encoding_of(msg.headers, msg.data))
        value = {"region": "syd", "role": "replica", "database": "ok", "in_recovery": True}
        await msg.respond(encode(Reply(id=req.id, ok=True, value=value)))

    await nc.subscribe("writebus.rpc.syd", queue=WORKER_QUEUE, cb=standby)
    await nc.flush()
    try:
        async with Database(settings_for(stack, "lax")) as db:
            for i in range(20):
                await db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [f"s{i}"])
                count = await db.fetchval(f"SELECT count(*) FROM {table}", consistency="strong")
                assert count == i + 1
        assert answered > 0  # the stand-in was asked, and the reads still ran
    finally:
        await nc.close()


async def test_a_strong_read_past_a_token_the_primary_never_reached_asks_once(
    stack: Any, buses: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A strong read's own question to the primary (asked after the read began) already says
    a token is beyond it: the read waits for the primary's position at once. It waited half
    a second first, then asked the primary a second time."""
    asked = 0
    real = ReadGate.primary_flush_lsn

    async def counted(self: ReadGate, *args: Any, **kwargs: Any) -> int:
        nonlocal asked
        asked += 1
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(ReadGate, "primary_flush_lsn", counted)
    forged = make_token(token_lsn(make_token(0)) + (1 << 40))
    async with Database(settings_for(stack, "lax")) as db:
        await db.execute(f"INSERT INTO {table}(body) VALUES ('seen')")
        with session(forged) as s:
            count = await db.fetchval(f"SELECT count(*) FROM {table}", consistency="strong")
            assert s.lsn is not None and s.lsn < token_lsn(forged)
    assert count == 1 and asked == 1


async def test_bounded_staleness_reads_locally_waits_then_raises_or_falls_back(
    stack: Any, buses: Any, table: str
) -> None:
    """max_lag=0.5: with the replica caught up the read is local at once; with replay paused
    and a write waiting, it raises StaleReadError after about the bound, or with
    fallback='primary' reads the primary and sees the write."""
    async with Database(settings_for(stack, "lax")) as db:
        await db.execute(f"INSERT INTO {table}(body) VALUES ('fresh')")
        t0 = time.monotonic()
        assert await db.fetchval(f"SELECT count(*) FROM {table}", max_lag=0.5) == 1
        assert time.monotonic() - t0 < 0.5  # local at once: no wait when within the bound
        with replay_paused(stack):
            stack.primary.execute(f"INSERT INTO {table}(body) VALUES ('behind')")
            assert db.tracker is not None
            deadline = time.monotonic() + 10
            # Lag counts from the primary's announcement (every heartbeat for a write made
            # outside the bus): wait until the replica itself reports well over the bound.
            while (bound := db.tracker.lag_bound()) is None or bound <= 1.5:
                assert time.monotonic() < deadline, "the replica never reported lag"
                await asyncio.sleep(0.05)
            with pytest.raises(StaleReadError) as info:
                await db.fetchval(f"SELECT count(*) FROM {table}", max_lag=0.5)
            assert info.value.lag is not None and info.value.lag > 0.5
            assert info.value.max_lag == 0.5 and info.value.region == "lax"
            assert await db.fetchval(f"SELECT count(*) FROM {table}", max_lag=0.5,
                                     fallback="primary") == 2
        deadline = time.monotonic() + 10
        while await db.fetchval(f"SELECT count(*) FROM {table}") != 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await db.fetchval(f"SELECT count(*) FROM {table}", max_lag=0.5) == 2


async def test_a_session_carries_the_newest_token(stack: Any, buses: Any, table: str) -> None:
    """Inside writebus.session(), writes raise the session's token and reads wait for it;
    session_token() returns the newest one."""
    async with Database(settings_for(stack, "lax")) as db:
        with session() as s:
            res = await db.execute(f"INSERT INTO {table}(body) VALUES ('s1')",
                                   await_replication=False)
            assert s.token == res.token == db.session_token()
            assert await db.fetchval(f"SELECT count(*) FROM {table}") == 1  # waited for s


async def test_a_write_whose_replay_wait_timed_out_still_counts_for_the_session(
    stack: Any, buses: Any, table: str
) -> None:
    """A write that committed but was not seen replayed in time raises ReplicationTimeoutError
    (applied). The session still carries it, so the next read waits for it instead of reading
    the replica that is known to be behind."""
    async with Database(settings_for(stack, "lax")) as db:
        with replay_paused(stack), session() as s:
            with pytest.raises(ReplicationTimeoutError) as info:
                await db.execute(f"INSERT INTO {table}(body) VALUES ('late')",
                                 replication_timeout=0.2)
            assert s.lsn == info.value.lsn
            assert db.session_token() == make_token(info.value.lsn)
            read = asyncio.create_task(db.fetchval(f"SELECT count(*) FROM {table}"))
            done, _ = await asyncio.wait({read}, timeout=0.5)
            assert not done  # waiting for the write, not reading the stale replica
            _resume(stack)
            assert await asyncio.wait_for(read, 10) == 1


async def test_a_token_past_anything_the_primary_reached_does_not_hold_reads(
    stack: Any, buses: Any, table: str
) -> None:
    """A token holding a position the primary never reached (forged, another cluster's, or
    lost in a failover) made every read wait the whole replication timeout and fail. After a
    short wait the read asks the primary: it then waits for the primary's own position and
    runs -- through the async and the sync API -- and a session started from such a token
    goes back to the primary's position, so the token it hands on is renewed."""
    (flushed,) = stack.primary.execute("SELECT pg_current_wal_flush_lsn()::text")[0]
    forged = make_token(token_lsn(make_token(0)) + (1 << 40))
    settings = settings_for(stack, "lax", replication_timeout=20)
    async with Database(settings) as db:
        await db.execute(f"INSERT INTO {table}(body) VALUES ('seen')")
        assert await asyncio.wait_for(
            db.fetchval(f"SELECT count(*) FROM {table}", after=forged), 10) == 1  # fmt: skip
        with session(forged) as s:
            assert await asyncio.wait_for(db.fetchval(f"SELECT count(*) FROM {table}"), 10) == 1
            assert s.lsn is not None and s.lsn < token_lsn(forged)
            assert s.token != forged and s.lsn >= parse_lsn(flushed)
    with SyncDatabase(settings) as sdb:
        count = await asyncio.wait_for(asyncio.to_thread(
            sdb.fetchval, f"SELECT count(*) FROM {table}", after=forged), 10)  # fmt: skip
    assert count == 1


async def test_a_read_whose_wait_times_out_says_it_did_not_run_and_wrote_nothing(
    stack: Any, buses: Any, table: str
) -> None:
    """A read that must see a token's position, with lax's replay paused, raises
    ReplicationTimeoutError after the replication timeout: its lsn is the token's, its
    outcome None (a read writes nothing) and its message says the read did not run -- not
    that a write committed."""
    async with Database(settings_for(stack, "lax", replication_timeout=0.3)) as db:
        with replay_paused(stack):
            res = await db.execute(f"INSERT INTO {table}(body) VALUES ('r')",
                                   await_replication=False)  # fmt: skip
            assert res.lsn is not None
            with pytest.raises(ReplicationTimeoutError) as info:
                await db.fetchval(f"SELECT count(*) FROM {table}", after=res.token)
    err = info.value
    assert err.lsn == res.lsn and err.outcome is None and err.region == "lax"
    assert str(err).startswith("the read did not run: it must see LSN ")
    assert "committed" not in str(err)


def test_a_sync_write_whose_replay_wait_timed_out_still_counts_for_the_session(
    stack: Any, buses: Any, table: str
) -> None:
    """The same through the SyncDatabase, whose session lives in the caller's thread."""
    with SyncDatabase(settings_for(stack, "lax")) as db:
        with replay_paused(stack), session() as s:
            with pytest.raises(ReplicationTimeoutError) as info:
                db.execute(f"INSERT INTO {table}(body) VALUES ('late')", replication_timeout=0.2)
            assert s.lsn == info.value.lsn and db.session_token() == s.token
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                # The session lives in this thread: the reader thread gets the token.
                read = pool.submit(db.fetchval, f"SELECT count(*) FROM {table}", after=s.token)
                with pytest.raises(concurrent.futures.TimeoutError):
                    read.result(0.5)  # waiting for the write
                _resume(stack)
                assert read.result(10) == 1
            assert db.fetchval(f"SELECT count(*) FROM {table}") == 1  # the session's read


async def test_a_closed_database_refuses_a_read_that_must_wait(
    stack: Any, buses: Any, table: str
) -> None:
    """On a pool of the caller's, which outlives the Database: once closed there is no
    tracker, so a read with a token raises rather than read a replica that may be behind (it
    read at once before). A plain read still runs."""
    url = settings_for(stack, "lax").database_url
    async with AsyncConnectionPool(url, kwargs={"autocommit": True}, open=False) as pool:
        db = Database(settings_for(stack, "lax"), pool=pool)
        async with db:
            res = await db.execute(f"INSERT INTO {table}(body) VALUES ('c')",
                                   await_replication=False)
        with pytest.raises(WriteBusError, match="not open"):
            await db.fetchval(f"SELECT count(*) FROM {table}", after=res.token)
        with pytest.raises(WriteBusError, match="not open"):
            await db.wait_for_lsn(res.lsn or 0)
        assert await db.fetchval("SELECT 1") == 1


# -- the middleware -------------------------------------------------------------------------


async def _asgi_call(app: Any, method: str, path: str, *cookies: str) -> tuple[int, dict[str, str], bytes]:
    headers = [(b"cookie", cookie.encode()) for cookie in cookies]  # HTTP/2: one per cookie
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, body


async def test_asgi_middleware_gives_read_your_writes_across_requests(
    stack: Any, buses: Any, table: str
) -> None:
    """POST writes (without waiting) and answers with the token in a cookie; the next GET with
    that cookie reads the note even with replay paused (it waits); without the cookie it
    would have read stale."""
    async with Database(settings_for(stack, "lax")) as db:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["method"] == "POST":
                await db.execute(f"INSERT INTO {table}(body) VALUES ('mw')", await_replication=False)
                status, body = 303, b""
            else:
                status = 200
                body = str(await db.fetchval(f"SELECT count(*) FROM {table}")).encode()
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": body})

        wrapped = WritebusASGIMiddleware(app)
        with replay_paused(stack):
            status, headers, _ = await _asgi_call(wrapped, "POST", "/notes")
            assert status == 303 and headers["writebus-lsn"].startswith("1.")
            cookie = headers["set-cookie"].split(";", 1)[0]
            assert (await _asgi_call(wrapped, "GET", "/notes"))[2] == b"0"  # stale
            # In a cookie header of its own, and beside a cookie that Python's own parser
            # rejects (a JSON value).
            get = asyncio.create_task(
                _asgi_call(wrapped, "GET", "/notes", cookie, f'prefs={{"a": 1}}; {cookie}')
            )
            done, _ = await asyncio.wait({get}, timeout=0.5)
            assert not done
            _resume(stack)
            assert (await asyncio.wait_for(get, 10))[2] == b"1"


def test_wsgi_middleware_with_the_sync_api(stack: Any, buses: Any, table: str) -> None:
    """The same across WSGI requests with the SyncDatabase: the cookie set by the POST makes
    the GET wait for the write it made."""
    with SyncDatabase(settings_for(stack, "lax")) as db:

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            if environ["REQUEST_METHOD"] == "POST":
                db.execute(f"INSERT INTO {table}(body) VALUES ('wsgi')", await_replication=False)
                start_response("303 See Other", [("Location", "/notes")])
                return [b""]
            count = db.fetchval(f"SELECT count(*) FROM {table}")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(count).encode()]

        wrapped = WritebusWSGIMiddleware(app)
        got: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
            got["status"], got["headers"] = status, dict(headers)

        with replay_paused(stack):
            wrapped({"REQUEST_METHOD": "POST"}, start_response)
            cookie = got["headers"]["Set-Cookie"].split(";", 1)[0]
            assert b"".join(wrapped({"REQUEST_METHOD": "GET"}, start_response)) == b"0"
            result: list[bytes] = []

            import threading

            reader = threading.Thread(
                target=lambda: result.extend(
                    wrapped({"REQUEST_METHOD": "GET", "HTTP_COOKIE": cookie}, start_response)
                )
            )
            reader.start()
            reader.join(0.5)
            assert reader.is_alive()  # waiting for replay
            _resume(stack)
            reader.join(10)
        assert result == [b"1"]

