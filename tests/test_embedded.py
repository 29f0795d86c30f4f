"""The embedded two-region stack, against real Postgres and nats-server processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from nats.aio.msg import Msg

from writebus.bus.embedded._reaper import Entry, Registry, overdue
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.errors import (
    DirectoryInUse,
    EmbeddedError,
    ServerStartError,
    WaitTimeout,
)
from writebus.bus.embedded.nats import NatsServer, has_interest, missing_gateways
from writebus.bus.embedded.ports import free_port, free_ports
from writebus.bus.embedded.proxy import DelayProxy, Route
from writebus.bus.embedded.stack import Stack
from writebus.bus.embedded.stackdir import (
    PORT_COUNT,
    DirLock,
    StackPorts,
    choose_ports,
    read_ports,
    write_ports,
)

DELAY_MS = 20.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """This module's own stack (shadowing the session one): its tests kill and restart servers."""
    with Stack(one_way_delay_ms=DELAY_MS) as s:
        yield s


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()


# --- pure helpers -------------------------------------------------------------------------------


def test_free_ports_are_distinct() -> None:
    """free_ports never returns the same port twice, within one call or across calls."""
    first = free_ports(20)
    second = free_ports(20)
    assert len(set(first + second)) == 40


def test_route_round_trips_through_its_spec() -> None:
    """A proxy route parses from and prints to the ``--route`` syntax."""
    route = Route.parse("127.0.0.1:7001=127.0.0.1:5432")
    assert route == Route("127.0.0.1", 7001, "127.0.0.1", 5432)
    assert Route.parse(str(route)) == route


def test_missing_gateways_needs_both_directions() -> None:
    """A region counts as connected only with an outbound and an inbound gateway connection."""
    conn = {"connection": {"cid": 1}}
    assert missing_gateways({}, ["lax"]) == ["lax"]
    only_out = {"outbound_gateways": {"lax": conn}, "inbound_gateways": {}}
    assert missing_gateways(only_out, ["lax"]) == ["lax"]
    both = {"outbound_gateways": {"lax": conn}, "inbound_gateways": {"lax": [conn]}}
    assert missing_gateways(both, ["lax"]) == []


def test_has_interest_matches_plain_and_queue_subscriptions() -> None:
    """Gateway interest lists hold plain subjects and "subject queue" entries."""
    assert has_interest(["a.b", "c.d workers"], "a.b")
    assert has_interest(["a.b", "c.d workers"], "c.d")
    assert not has_interest(["a.b.c"], "a.b")


# --- the proxy ----------------------------------------------------------------------------------


async def _round_trip(port: int, payload: bytes = b"x") -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        echoed = await reader.readexactly(len(payload))
        elapsed = time.perf_counter() - started
        assert echoed == payload
        return elapsed
    finally:
        writer.close()


async def test_proxy_delays_each_direction(echo_port: int) -> None:
    """A round trip through a DelayProxy takes at least twice the one-way delay."""
    async with DelayProxy(target_port=echo_port, one_way_delay_ms=DELAY_MS) as proxy:
        rtt = await _round_trip(proxy.port)
    assert rtt >= 2 * DELAY_MS / 1000
    assert rtt < 2 * DELAY_MS / 1000 + 0.5


async def test_proxy_without_delay_forwards_directly(echo_port: int) -> None:
    """With zero delay the proxy is a plain forwarder: a round trip takes well under a delay."""
    async with DelayProxy(target_port=echo_port) as proxy:
        rtt = await _round_trip(proxy.port)
    assert rtt < DELAY_MS / 1000


async def test_proxy_keeps_byte_order_and_does_not_stop_and_wait(echo_port: int) -> None:
    """Many chunks sent back to back arrive in order, in about one round trip, not one per chunk."""
    async with DelayProxy(target_port=echo_port, one_way_delay_ms=DELAY_MS) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        chunks = [i.to_bytes(4, "big") * 1024 for i in range(200)]
        started = time.perf_counter()
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        echoed = await reader.readexactly(sum(map(len, chunks)))
        elapsed = time.perf_counter() - started
        writer.close()
    assert echoed == b"".join(chunks)
    # Stop-and-wait would take 200 round trips (8 s); pipelined it is about one.
    assert elapsed < 20 * 2 * DELAY_MS / 1000


async def test_proxy_closing_one_side_closes_the_other(echo_port: int) -> None:
    """When the target goes away, the proxied client connection is closed too."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    target = int(server.sockets[0].getsockname()[1])
    async with DelayProxy(target_port=target, one_way_delay_ms=DELAY_MS) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
        writer.close()
    server.close()


# --- Postgres -----------------------------------------------------------------------------------


def test_row_written_on_primary_is_visible_on_replica(stack: Stack) -> None:
    """A committed row on the primary streams to the replica through the WAN proxy."""
    stack.primary.execute("CREATE TABLE IF NOT EXISTS visible (id int primary key, note text)")
    stack.primary.execute("INSERT INTO visible VALUES (1, 'from syd')")
    stack.wait_replica_caught_up(timeout=10)
    assert stack.replica.execute("SELECT note FROM visible WHERE id = 1") == [("from syd",)]


def test_replica_is_in_recovery_and_primary_is_not(stack: Stack) -> None:
    """The replica is a hot standby streaming from the primary under its own application name."""
    assert stack.replica.execute("SELECT pg_is_in_recovery()") == [(True,)]
    assert stack.primary.execute("SELECT pg_is_in_recovery()") == [(False,)]
    rows = stack.primary.execute("SELECT application_name, state FROM pg_stat_replication")
    assert rows == [(stack.replica.name, "streaming")]


def test_replica_rejects_writes(stack: Stack) -> None:
    """Writes on the replica fail as read-only transactions."""
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        stack.replica.execute("CREATE TABLE nope (id int)")


def test_primary_is_reached_through_the_wan_from_the_replica_region(stack: Stack) -> None:
    """From the replica region the primary is a proxy port, and a round trip pays the delay."""
    assert stack.primary_url_from(stack.primary_region) == stack.primary.url
    url = stack.primary_url_from(stack.replica_region)
    assert url != stack.primary.url
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("SELECT 1")
        assert time.perf_counter() - started >= 2 * DELAY_MS / 1000


def test_env_names_the_region_services(stack: Stack) -> None:
    """env() gives a process exactly the variables that locate its region's services."""
    env = stack.env("lax", WRITEBUS_PREFIX="t")
    assert env == {
        "PRIMARY_REGION": "syd",
        "FLY_REGION": "lax",
        "NATS_URL": stack.nats["lax"].url,
        "DATABASE_URL": stack.replica.url,
        "PRIMARY_DATABASE_URL": stack.primary_url_from("lax"),
        "WRITEBUS_PREFIX": "t",
    }
    assert stack.env("syd")["DATABASE_URL"] == stack.primary.url
    assert set(stack.describe()["regions"]) == {"syd", "lax"}


# --- NATS ---------------------------------------------------------------------------------------


async def test_message_crosses_the_gateway(stack: Stack) -> None:
    """A message published on syd's server reaches a subscriber on lax's server."""
    sub_nc = await nats.connect(stack.nats_url("lax"))
    pub_nc = await nats.connect(stack.nats_url("syd"))
    try:
        sub = await sub_nc.subscribe("embedded.test.hello")
        await sub_nc.flush()
        # Interest-only gateways: syd forwards only once it has heard of lax's subscription.
        await asyncio.to_thread(
            stack.nats["syd"].wait_gateway_interest, "lax", ["embedded.test.hello"], timeout=5
        )
        await pub_nc.publish("embedded.test.hello", b"hi from syd")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hi from syd"
    finally:
        await sub_nc.close()
        await pub_nc.close()


async def test_request_reply_across_the_gateway(stack: Stack) -> None:
    """A request from syd is answered by a responder on lax, paying the WAN round trip."""
    responder = await nats.connect(stack.nats_url("lax"))
    requester = await nats.connect(stack.nats_url("syd"))
    try:

        async def answer(msg: Msg) -> None:
            await msg.respond(b"pong:" + msg.data)

        await responder.subscribe("embedded.test.ping", cb=answer, queue="workers")
        await responder.flush()
        await asyncio.to_thread(
            stack.nats["syd"].wait_gateway_interest, "lax", ["embedded.test.ping"], timeout=5
        )
        reply = await requester.request("embedded.test.ping", b"1", timeout=5)
        assert reply.data == b"pong:1"
        started = time.perf_counter()
        reply = await requester.request("embedded.test.ping", b"2", timeout=5)
        assert reply.data == b"pong:2"
        assert time.perf_counter() - started >= 2 * DELAY_MS / 1000
    finally:
        await responder.close()
        await requester.close()


def test_nats_server_reports_start_failure(tmp_path: Path) -> None:
    """A nats-server that cannot bind its port fails start() with its log in the error."""
    taken = free_port()
    blocker = __import__("socket").socket()
    blocker.bind(("127.0.0.1", taken))
    blocker.listen()
    try:
        server = NatsServer(
            name="nats-broken",
            region="x",
            client_port=taken,
            gateway_port=free_port(),
            monitor_port=free_port(),
            workdir=tmp_path,
        )
        with pytest.raises(ServerStartError) as info:
            server.start(timeout=5)
        assert info.value.log_tail
        assert not server.is_running
    finally:
        blocker.close()


# --- restarts (last: they disturb the shared stack, and leave it working) ----------------------


def test_replica_kill_and_start_keeps_its_port(stack: Stack) -> None:
    """A SIGKILLed replica starts again on the same port and resumes streaming."""
    port = stack.replica.port
    stack.replica.kill()
    assert not stack.replica.is_running
    stack.primary.execute("CREATE TABLE IF NOT EXISTS while_down (id int)")
    stack.primary.execute("INSERT INTO while_down VALUES (42)")
    stack.replica.start(timeout=30)
    assert stack.replica.port == port
    stack.wait_replica_caught_up(timeout=10)
    assert stack.replica.execute("SELECT id FROM while_down") == [(42,)]


def test_primary_crash_and_restart_replica_resumes_streaming(stack: Stack) -> None:
    """After the primary is SIGKILLed and started again, the replica reconnects and replays."""
    stack.primary.kill()
    stack.primary.start(timeout=30)
    stack.primary.execute("CREATE TABLE IF NOT EXISTS after_crash (id int)")
    stack.primary.execute("INSERT INTO after_crash VALUES (7)")
    stack.wait_replica_caught_up(timeout=10)
    assert stack.replica.execute("SELECT id FROM after_crash") == [(7,)]


async def test_nats_restart_keeps_ports_and_gateways_reconnect(stack: Stack) -> None:
    """A restarted nats-server keeps its ports, rejoins the gateways and carries messages again."""
    server = stack.nats["lax"]
    ports = (server.client_port, server.gateway_port, server.monitor_port)
    await asyncio.to_thread(server.restart)
    assert (server.client_port, server.gateway_port, server.monitor_port) == ports
    for each in stack.nats.values():
        await asyncio.to_thread(each.wait_gateways, timeout=15)
    await test_message_crosses_the_gateway(stack)


# --- the bus process wrapper --------------------------------------------------------------------


def test_bus_process_waits_for_ready_marker(tmp_path: Path) -> None:
    """wait_ready returns once the marker is logged; terminate then ends the process."""
    proc = BusProcess(
        env={"EMBEDDED_TEST": "1"},
        log_path=tmp_path / "bus.log",
        command=[
            "-c",
            "import os, sys, time; print('starting'); print('event=bus.ready', os.environ['EMBEDDED_TEST'], flush=True); time.sleep(60)",
        ],
    ).start()
    try:
        proc.wait_ready(timeout=10)
        assert "bus.ready 1" in proc.log_tail()
        proc.terminate()
        assert proc.wait(timeout=10) is not None
        assert proc.returncode == -15
    finally:
        proc.kill()


def test_bus_process_that_exits_early_reports_its_log(tmp_path: Path) -> None:
    """A process that dies before logging the marker fails wait_ready with its log tail."""
    proc = BusProcess(
        env={},
        log_path=tmp_path / "bus.log",
        command=["-c", "import sys; print('boom: no config', file=sys.stderr); sys.exit(3)"],
    ).start()
    with pytest.raises(ServerStartError) as info:
        proc.wait_ready(timeout=10)
    assert "boom: no config" in info.value.log_tail
    assert proc.returncode == 3


def test_bus_process_not_ready_in_time(tmp_path: Path) -> None:
    """A process that never logs the marker fails wait_ready with WaitTimeout."""
    proc = BusProcess(
        env={},
        log_path=tmp_path / "bus.log",
        command=["-c", "import time; time.sleep(60)"],
    ).start()
    try:
        with pytest.raises(WaitTimeout):
            proc.wait_ready(timeout=0.3)
    finally:
        proc.kill()
        proc.wait(5)
    assert sys.executable in proc.command


# --- ports of a stack directory ---------------------------------------------------------------


def test_base_port_assigns_consecutive_ports_in_documented_order() -> None:
    """StackPorts.from_base hands out N..N+11: Postgres first, then NATS, then the WAN proxy."""
    ports = StackPorts.from_base(20000, ("syd", "lax"))
    assert ports.numbers() == list(range(20000, 20000 + PORT_COUNT))
    assert (ports.pg_primary, ports.pg_replica) == (20000, 20001)
    assert ports.nats_client == {"syd": 20002, "lax": 20003}
    assert ports.wan_gateway == {"syd": 20010, "lax": 20011}
    assert StackPorts.from_json(json.loads(json.dumps(ports.to_json()))) == ports
    with pytest.raises(ValueError):
        StackPorts.from_base(65530, ("syd", "lax"))


def test_choose_ports_prefers_base_port_then_saved_then_fresh() -> None:
    """An explicit base port wins over a saved port map, which wins over fresh free ports."""
    regions = ("syd", "lax")
    saved = StackPorts.from_base(30000, regions)
    fresh = list(range(40000, 40000 + PORT_COUNT))

    def pick(base_port: int | None, have: StackPorts | None) -> StackPorts:
        return choose_ports(regions=regions, saved=have, base_port=base_port, fresh=lambda n: fresh)

    assert pick(20000, saved).pg_primary == 20000
    assert pick(None, saved) == saved
    assert pick(None, None).numbers() == fresh


def test_saved_ports_for_other_regions_are_refused(tmp_path: Path) -> None:
    """A port map written for other regions is not silently reused (the data dirs differ)."""
    write_ports(tmp_path, StackPorts.from_base(30000, ("syd", "lax")), ("syd", "lax"))
    assert read_ports(tmp_path, ("syd", "lax")) == StackPorts.from_base(30000, ("syd", "lax"))
    with pytest.raises(EmbeddedError, match="regions"):
        read_ports(tmp_path, ("ams", "lax"))
    assert read_ports(tmp_path / "nothing-here", ("syd", "lax")) is None


def test_dir_lock_admits_one_holder(tmp_path: Path) -> None:
    """A second lock on a stack directory fails with DirectoryInUse until the first is released."""
    first, second = DirLock(tmp_path), DirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(DirectoryInUse, match=str(tmp_path)):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


# --- the watchdog -------------------------------------------------------------------------------


def test_overdue_picks_live_entries_past_their_grace() -> None:
    """Only groups still alive, past their grace and not yet SIGKILLed get SIGKILL."""
    fast = Entry(pid=1, name="fast", signal=15, grace=0.5)
    slow = Entry(pid=2, name="slow", signal=2, grace=10.0)
    gone = Entry(pid=3, name="gone", signal=15, grace=0.0)
    done = Entry(pid=4, name="done", signal=15, grace=0.0, killed=True)
    entries = [fast, slow, gone, done]
    assert overdue(entries, alive={1, 2, 4}, elapsed=0.1) == []
    assert overdue(entries, alive={1, 2, 4}, elapsed=1.0) == [fast]
    assert overdue(entries, alive={1, 2, 4}, elapsed=11.0) == [fast, slow]


def test_registry_applies_parent_commands() -> None:
    """watch/forget/remove/keep lines from the parent build up what to clean after it dies."""
    registry = Registry()
    for command in (
        {"op": "watch", "pid": 10, "name": "a", "signal": 2, "grace": 1.5},
        {"op": "watch", "pid": 11, "name": "b"},
        {"op": "forget", "pid": 11},
        {"op": "remove", "path": "/x"},
        {"op": "remove", "path": "/y"},
        {"op": "keep", "path": "/x"},
        {"op": "unknown"},
    ):
        registry.apply(command, starttime=lambda pid: "123")
    assert list(registry.entries) == [10]
    assert registry.entries[10].signal == 2 and registry.entries[10].grace == 1.5
    assert registry.entries[10].starttime == "123"
    assert registry.paths == ["/y"]


# A parent that registers three process groups with its own watchdog, then waits to be killed:
# "polite" exits on SIGTERM; "stubborn" (a shell and its child) ignores SIGTERM; "forgotten" is
# unregistered again.
_WATCHED_PARENT = r"""
import json, subprocess, sys
from writebus.bus.embedded.watchdog import Watchdog

dog = Watchdog()
polite = subprocess.Popen(["sleep", "60"], start_new_session=True)
stubborn = subprocess.Popen(
    ["sh", "-c", "trap '' TERM; sleep 60 & echo ready; wait"],
    start_new_session=True, stdout=subprocess.PIPE,
)
stubborn.stdout.readline()
forgotten = subprocess.Popen(["sleep", "60"], start_new_session=True)
dog.watch(polite.pid, name="polite", grace=5.0)
dog.watch(stubborn.pid, name="stubborn", grace=0.3)
dog.watch(forgotten.pid, name="forgotten")
dog.forget(forgotten.pid)
dog.remove_on_exit(sys.argv[1])
print(json.dumps({"polite": polite.pid, "stubborn": stubborn.pid,
                  "forgotten": forgotten.pid, "watchdog": dog.pid}), flush=True)
sys.stdin.read()
"""


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_watchdog_stops_registered_groups_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    """After the parent is SIGKILLed, its watchdog SIGTERMs every registered group, SIGKILLs the
    ones that ignore it (grandchildren too), removes the registered directory, leaves forgotten
    processes alone, and exits."""
    doomed = tmp_path / "scratch"
    doomed.mkdir()
    log = tmp_path / "parent.err"
    with open(log, "wb") as err:
        parent = subprocess.Popen(
            [sys.executable, "-c", _WATCHED_PARENT, str(doomed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    assert parent.stdout is not None
    pids = json.loads(parent.stdout.readline())
    try:
        assert len(_group_members(pids["stubborn"])) == 2  # the shell and its sleep
        parent.kill()
        parent.wait()
        _wait_for(
            lambda: not _group_members(pids["polite"]) and not _group_members(pids["stubborn"]),
            10, "registered groups gone",
        )  # fmt: skip
        _wait_for(lambda: not _group_members(pids["watchdog"]), 10, "watchdog exits")
        assert not doomed.exists()
        assert _group_members(pids["forgotten"]) == [pids["forgotten"]]
        report = log.read_text()
        assert "stopping polite" in report and "forgotten" not in report
        assert "SIGKILLed after their grace period: stubborn" in report
    finally:
        for name in ("polite", "stubborn", "forgotten"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pids[name], signal.SIGKILL)


def test_monitoring_ignores_an_http_proxy_in_the_environment(lone_nats: NatsServer) -> None:
    """With http_proxy set and 127.0.0.1 not in no_proxy (a common developer setup), the
    health check went to the proxy and failed until start-up timed out: "not healthy after
    60 s". Monitoring requests go straight to the server. (A process of its own: urllib
    reads the proxy variables once per process.)"""
    dead = free_ports(1)[0]  # nothing listens: a proxy that refuses every request
    script = (
        "import sys\n"
        "import writebus.bus.embedded.nats as n\n"
        "class S: monitor_url = sys.argv[1]\n"
        "print(n.NatsServer.monitor(S(), 'healthz'))\n"
    )
    env = {**os.environ, "http_proxy": f"http://127.0.0.1:{dead}",
           "HTTP_PROXY": f"http://127.0.0.1:{dead}", "no_proxy": "localhost"}  # fmt: skip
    env.pop("NO_PROXY", None)
    out = subprocess.run([sys.executable, "-c", script, lone_nats.monitor_url], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "{'status': 'ok'}"


def test_bus_process_leaves_the_users_client_settings_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bus node of the stack gets the stack's settings, not the user's PGSSLMODE=require or
    NATS_TLS_CA (for their own servers), which made it fail against the stack's: those given
    explicitly still reach it."""
    monkeypatch.setenv("PGSSLMODE", "require")
    monkeypatch.setenv("NATS_TLS_CA", "/nowhere/ca.pem")
    proc = BusProcess(
        env={"NATS_URL": "nats://127.0.0.1:1"},
        log_path=tmp_path / "bus.log",
        command=["-c", "import os; print('event=bus.ready', sorted(k for k in os.environ "
                       "if k.startswith(('PG', 'NATS_'))), flush=True)"],
    ).start()
    try:
        proc.wait_ready(timeout=10)
        assert "bus.ready ['NATS_URL']" in proc.log_tail()
    finally:
        proc.kill()


def test_the_stacks_urls_hold_against_a_users_libpq_settings(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's PGSSLMODE=require (for their own database) made every connection to the
    stack's servers fail -- in-process, as the pytest plugin's stack fixture makes them. Its
    URLs name the settings that matter."""
    monkeypatch.setenv("PGSSLMODE", "require")
    monkeypatch.setenv("PGTARGETSESSIONATTRS", "read-write")
    for url in (stack.primary.url, stack.replica.url, stack.primary_url_from("lax")):
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
