"""What only the synchronous API has to get right: threads, fork, and its signatures."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from tests.support.stack import REPO, settings_for
from writebus import Database, Outcome, SyncDatabase, WriteBusError


def test_many_threads_share_one_sync_database(stack: Any, buses: Any, table: str) -> None:
    """16 threads write and read back through one SyncDatabase at once: every write is seen
    by its own thread's next read, and every row is there once."""
    errors: list[BaseException] = []
    stale = 0
    lock = threading.Lock()

    def worker(n: int, db: SyncDatabase) -> None:
        nonlocal stale
        try:
            for i in range(10):
                res = db.execute(f"INSERT INTO {table}(body) VALUES (%s) RETURNING id", [f"t{n}-{i}"])
                body = db.fetchval(f"SELECT body FROM {table} WHERE id = %s", [res.rows[0][0]])
                if body != f"t{n}-{i}":
                    with lock:
                        stale += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with SyncDatabase(settings_for(stack, "lax"), max_size=16) as db:
        threads = [threading.Thread(target=worker, args=(n, db)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        count = db.fetchval(f"SELECT count(DISTINCT body) FROM {table}")
    assert errors == [] and stale == 0 and count == 160


FORK_SCRIPT = """
import os, sys
from writebus import Settings, SyncDatabase

env = {env!r}
db = SyncDatabase(Settings.from_env(env))
db.open()
db.execute("INSERT INTO {table}(body) VALUES ('parent-before')")
pid = os.fork()
if pid == 0:
    # The child: its own connections and loop, created on first use.
    res = db.execute("INSERT INTO {table}(body) VALUES ('child') RETURNING id")
    ok = db.fetchval("SELECT body FROM {table} WHERE id = %s", [res.rows[0][0]]) == "child"
    db.close()
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
# The parent's connections were not touched by the child.
db.execute("INSERT INTO {table}(body) VALUES ('parent-after')")
print(os.waitstatus_to_exitcode(status), db.fetchval("SELECT count(*) FROM {table}"))
db.close()
"""


def test_a_forked_child_reconnects_and_leaves_the_parent_alone(
    stack: Any, buses: Any, table: str
) -> None:
    """After os.fork() (gunicorn --preload, Celery prefork) the child's first call opens its
    own connections; it writes and reads its write; the parent keeps working afterwards."""
    code = FORK_SCRIPT.format(env=stack.env("lax"), table=table)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["0", "3"], out.stderr[-3000:]


FORK_THREADS_SCRIPT = """
import asyncio, os, threading
from writebus import Database, Settings, SyncDatabase

db = SyncDatabase(Settings.from_env({env!r}))
db.open()
opens = []
real_open = Database.open

async def slow_open(self):  # a slow reconnect: the child's other threads arrive meanwhile
    opens.append(1)
    await asyncio.sleep(0.3)
    await real_open(self)

Database.open = slow_open
pid = os.fork()
if pid == 0:
    errors = []

    def first_call(n):
        try:
            db.execute("INSERT INTO {table}(body) VALUES (%s)", [f"child-{{n}}"])
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=first_call, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    print(len(opens), len(errors), db.fetchval("SELECT count(*) FROM {table}"), errors[:1])
    db.close()
    os._exit(0)
os.waitpid(pid, 0)
db.close()
"""


def test_a_forked_childs_threads_reopen_it_once(stack: Any, buses: Any, table: str) -> None:
    """Eight threads of a forked child make their first calls at once: the SyncDatabase is
    reopened once, the others wait for it, and all eight writes go through. (Others arriving
    mid-reopen used to find it half open -- "not open" errors -- or reopen it again.)"""
    code = FORK_THREADS_SCRIPT.format(env=stack.env("lax"), table=table)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[:3] == ["1", "0", "8"], out.stdout + out.stderr[-3000:]


FORK_DURING_OPEN_SCRIPT = """
import asyncio, os, threading, time
from writebus import Database, Settings, SyncDatabase

db = SyncDatabase(Settings.from_env({env!r}))
real_open = Database.open

async def slow_open(self):
    await asyncio.sleep(0.5)
    await real_open(self)

Database.open = slow_open
opening = threading.Thread(target=db.open)
opening.start()
time.sleep(0.2)  # the parent's open() is under way
pid = os.fork()
if pid == 0:
    said = []

    def call():
        try:
            db.execute("INSERT INTO {table}(body) VALUES ('child')")
            said.append("wrote")
        except Exception as exc:
            said.append(type(exc).__name__)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(30)
    print(said[0] if said else "hung", flush=True)
    os._exit(0)
opening.join(30)
os.waitpid(pid, 0)
db.execute("INSERT INTO {table}(body) VALUES ('parent')")
print(db.fetchval("SELECT count(*) FROM {table}"))
db.close()
"""


def test_a_fork_while_the_parent_opens_leaves_the_child_its_own(
    stack: Any, buses: Any, table: str
) -> None:
    """A fork while another thread of the parent is inside ``open()``: the child still opens
    connections of its own on its first call (it must not take the parent's half-open loop,
    which has no thread in the child), and the parent's open completes and serves."""
    code = FORK_DURING_OPEN_SCRIPT.format(env=stack.env("lax"), table=table)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["wrote", "2"], out.stdout + out.stderr[-3000:]


FORK_REOPEN_FAILS_SCRIPT = """
import os
from writebus import ConnectError, Database, Settings, SyncDatabase

db = SyncDatabase(Settings.from_env({env!r}))
db.open()
pid = os.fork()
if pid == 0:
    said = [db.database is None and db.tracker is None]  # nothing of the parent's handed out
    real_open, failed = Database.open, []

    async def open_once_failing(self):
        if not failed:
            failed.append(1)
            raise ConnectError("nats", "127.0.0.1:1", "refused (put in by the test)")
        await real_open(self)

    Database.open = open_once_failing
    for _ in range(2):
        try:
            db.execute("INSERT INTO {table}(body) VALUES ('child')")
            said.append("wrote")
        except ConnectError as exc:
            said.append(str(exc.outcome))
    print(*said, db.database is not None, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
db.close()
"""


def test_a_forked_childs_failed_reopen_is_tried_again(stack: Any, buses: Any, table: str) -> None:
    """In a forked child, nothing of the parent's is handed out before the first call; a first
    call whose reopen fails says the write was not applied, and the next call reopens and
    writes. (A failed reopen used to leave the handle closed for good in the child.)"""
    code = FORK_REOPEN_FAILS_SCRIPT.format(env=stack.env("lax"), table=table)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "not_applied", "wrote", "True"], out.stderr[-3000:]


AFTER_EXIT_HOOK_SCRIPT = """
from writebus import Settings, SyncDatabase, WriteBusError
from writebus.client import loopthread

db = SyncDatabase(Settings.from_env({env!r}))
db.open()
loopthread._stop_at_exit()  # what interpreter exit runs; a daemon thread may still call
try:
    db.execute("INSERT INTO {table}(body) VALUES ('after exit')")
    print("wrote")
except WriteBusError as exc:
    print(exc.outcome, "exiting" in str(exc))
print(db.fetchval("SELECT count(*) FROM {table}"))  # a plain read needs no loop
db.close()
"""


def test_a_write_after_the_exit_hook_is_refused_typed(stack: Any, buses: Any, table: str) -> None:
    """After the exit hook stopped writebus' loop thread (a daemon thread still calling as the
    process exits), a write says it was not applied, typed; a plain read still runs. (It
    raised asyncio's untyped RuntimeError.)"""
    code = AFTER_EXIT_HOOK_SCRIPT.format(env=stack.env("lax"), table=table)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["not_applied", "True", "0"], out.stderr[-3000:]


FORK_GIVEN_POOL_SCRIPT = """
import os
from psycopg_pool import ConnectionPool
from writebus import Settings, SyncDatabase, WriteBusError

settings = Settings.from_env({env!r})
pool = ConnectionPool(settings.database_url, min_size=1, max_size=1, kwargs={{"autocommit": True}})
db = SyncDatabase(settings, pool=pool)
db.open()
assert db.fetchval("SELECT 1") == 1
pid = os.fork()
if pid == 0:
    said = []
    for call in (lambda: db.fetchval("SELECT 2"), lambda: db.execute("SELECT 3")):
        try:
            call()
            said.append("ran")
        except WriteBusError as exc:
            said.append(f"{{exc.outcome}}:{{'after fork' in str(exc)}}")
    print(*said)
    os._exit(0)
os.waitpid(pid, 0)
print(db.fetchval("SELECT 4"))  # the parent's pool is untouched
db.close()
pool.close()
"""


def test_a_forked_child_refuses_a_pool_it_was_given(stack: Any, buses: Any) -> None:
    """A pool the caller handed in holds the parent's connections: a forked child cannot
    reopen it, so its calls say so -- reads plainly, writes as not applied -- instead of
    talking on the parent's sockets, and the parent keeps working."""
    code = FORK_GIVEN_POOL_SCRIPT.format(env=stack.env("lax"))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["None:True", "not_applied:True", "4"], out.stderr[-3000:]


@pytest.mark.parametrize(
    "name",
    ["execute", "batch", "call", "call_result", "rpc_region", "rpc_primary", "wait_for_lsn"],
)
def test_sync_methods_take_the_async_methods_options(name: str) -> None:
    """Every delegating method presents exactly the async method's parameters."""
    sync_params = inspect.signature(getattr(SyncDatabase, name)).parameters
    async_params = inspect.signature(getattr(Database, name)).parameters
    assert list(sync_params) == list(async_params)


def test_the_read_methods_match_too() -> None:
    """fetch, fetchrow and fetchval take the same parameters in both APIs."""
    for name in ("fetch", "fetchrow", "fetchval"):
        a = inspect.signature(getattr(Database, name)).parameters
        s = inspect.signature(getattr(SyncDatabase, name)).parameters
        assert list(a) == list(s), name


def test_a_closed_sync_database_says_so(stack: Any, buses: Any) -> None:
    """Calls after close() raise a WriteBusError instead of hanging."""
    db = SyncDatabase(settings_for(stack, "lax"))
    db.open()
    db.close()
    with pytest.raises(WriteBusError, match="not open") as info:
        db.execute("SELECT 1")
    assert info.value.outcome is Outcome.NOT_APPLIED
