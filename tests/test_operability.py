"""What operators see of a running stack: /metrics, /healthz, /readyz, status messages and
progress broadcasts that carry lag. Real servers, real bus processes; exposition text is read
with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import nats
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import bus_env, http_url, settings_for, start_bus
from writebus import Database
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.ports import free_port


@pytest.fixture(scope="module")
def nodes(stack: Any) -> Iterator[tuple[str, dict[str, BusProcess]]]:
    """A bus node per region on a prefix of their own (fresh counters)."""
    prefix = f"ops{uuid.uuid4().hex[:8]}"
    procs = {
        r: start_bus(stack, r, log_name=f"bus-{prefix}-{r}", WRITEBUS_PREFIX=prefix)
        for r in ("syd", "lax")
    }
    try:
        yield prefix, procs
    finally:
        for p in procs.values():
            p.stop(10)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_requests_and_expose_the_node(
    stack: Any, nodes: tuple[str, dict[str, BusProcess]], table: str
) -> None:
    """After writes from lax, syd's /metrics counts them by subject, kind and outcome, has
    latency histograms, pool statistics, broadcasts and lax's replay lag -- all writebus_*."""
    prefix, procs = nodes
    async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
        for i in range(5):
            await db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [f"m{i}"])
        with pytest.raises(Exception):  # noqa: B017 - a unique violation, counted as rejected
            await db.execute(f"INSERT INTO {table}(body) VALUES ('m0')")
    code, text = _get(f"{http_url(procs['syd'])}/metrics")
    assert code == 200
    samples = _samples(text)
    write = f"{prefix}.write"
    ok = (("kind", "statements"), ("outcome", "ok"), ("subject", write))
    bad = (("kind", "statements"), ("outcome", "rejected"), ("subject", write))
    assert samples[("writebus_requests_total", ok)] >= 5
    assert samples[("writebus_requests_total", bad)] == 1
    assert samples[("writebus_commit_seconds_count", ())] >= 6
    assert ("writebus_request_seconds_bucket", (("le", "0.3"),)) in samples
    assert samples[("writebus_pool_pool_max", ())] >= 2
    assert samples[("writebus_broadcasts_published_total", (("role", "primary"),))] >= 1
    names = {name for name, _ in samples}
    assert all(n.startswith("writebus_") for n in names if not n.startswith(("python_", "process_")))
    deadline = time.monotonic() + 5
    while ("writebus_replay_lag_bytes", (("region", "lax"),)) not in samples:
        assert time.monotonic() < deadline, "syd never reported lax's lag"
        await asyncio.sleep(0.2)
        samples = _samples(_get(f"{http_url(procs['syd'])}/metrics")[1])


def test_healthz_says_which_part_is_up(nodes: tuple[str, dict[str, BusProcess]]) -> None:
    """/healthz answers 200 with a JSON body naming each check, on both nodes."""
    _, procs = nodes
    for region, proc in procs.items():
        code, body = _get(f"{http_url(proc)}/healthz")
        data = json.loads(body)
        assert code == 200 and data["status"] == "ok" and data["region"] == region
        assert data["checks"]["nats"]["ok"] and data["checks"]["database"]["ok"]
        assert data["role"] == ("primary" if region == "syd" else "replica")


def test_health_fails_while_the_node_is_starting(stack: Any) -> None:
    """A primary-region node listening for a newer primary before it serves writes
    (``WRITEBUS_FENCE_WAIT``) is role ``starting``: /healthz and /readyz answer 503 "still
    starting" until it serves. They answered 200, so a rolling deploy could retire the old
    node while the new one served nothing."""
    port = free_port()
    env = bus_env(stack, "syd", WRITEBUS_PREFIX=f"start{uuid.uuid4().hex[:8]}",
                  WRITEBUS_FENCE_WAIT="4", WRITEBUS_HTTP_ADDR=f"127.0.0.1:{port}")  # fmt: skip
    proc = stack.start_bus("syd", env=env, log_name=f"bus-starting-{port}")
    try:
        url, seen = f"http://127.0.0.1:{port}", None
        deadline = time.monotonic() + 20
        while seen is None or seen[1].get("role") != "starting":
            assert time.monotonic() < deadline, f"never saw the node starting: {seen}"
            try:
                code, body = _get(f"{url}/healthz")
            except urllib.error.URLError:  # not listening yet
                time.sleep(0.02)
                continue
            seen = (code, json.loads(body))
        assert seen[0] == 503 and seen[1]["status"] == "fail"
        assert seen[1]["checks"]["role"]["error"] == "the node is still starting"
        assert _get(f"{url}/readyz")[0] == 503
        proc.wait_ready(30)
        assert _get(f"{url}/healthz")[0] == 200 and _get(f"{url}/readyz")[0] == 200
    finally:
        proc.stop(10)


def test_readyz_refuses_bounds_that_are_no_finite_number(
    nodes: tuple[str, dict[str, BusProcess]],
) -> None:
    """``nan`` passed every lag check (comparisons with it are false), ``1e400`` made a 500:
    both, and a negative bound, are a 400 naming the parameter."""
    _, procs = nodes
    url = http_url(procs["lax"])
    for query in ("max_lag=nan", "max_lag=inf", "max_lag=-1", "max_lag=abc",
                  "max_lag_bytes=nan", "max_lag_bytes=1e400"):  # fmt: skip
        code, body = _get(f"{url}/readyz?{query}")
        assert code == 400 and query.split("=")[0] in body, (query, code, body)
    deadline = time.monotonic() + 10  # the lag is unknown until lax's node heard the primary
    while _get(f"{url}/readyz?max_lag=5&max_lag_bytes=1e9")[0] != 200:
        assert time.monotonic() < deadline, "valid bounds never passed"
        time.sleep(0.1)


async def test_readyz_fails_while_the_replica_lags_past_the_bound(
    stack: Any, nodes: tuple[str, dict[str, BusProcess]], table: str
) -> None:
    """With replay paused on the lax replica and a write on the primary, lax's
    /readyz?max_lag=0.5 turns 503 once the write has waited longer than 0.5 s, while plain
    /readyz stays 200; resuming replay makes it 200 again."""
    _, procs = nodes
    url = http_url(procs["lax"])
    assert _get(f"{url}/readyz?max_lag=0.5")[0] == 200
    with psycopg.connect(stack.replica.url, autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            stack.primary.execute(f"INSERT INTO {table}(body) VALUES ('lagging')")
            deadline = time.monotonic() + 10
            while (code := _get(f"{url}/readyz?max_lag=0.5")[0]) != 503:
                assert time.monotonic() < deadline, "readyz never noticed the lag"
                await asyncio.sleep(0.1)
            code, body = _get(f"{url}/readyz?max_lag=0.5")
            lag = json.loads(body)["checks"]["lag"]
            assert code == 503 and lag["ok"] is False and lag["seconds"] > 0.5 and lag["bytes"] > 0
            assert _get(f"{url}/readyz")[0] == 200
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
    deadline = time.monotonic() + 10
    while _get(f"{url}/readyz?max_lag=0.5")[0] != 200:
        assert time.monotonic() < deadline, "readyz never recovered"
        await asyncio.sleep(0.1)


async def test_readyz_says_the_lag_is_unknown_while_the_primary_is_silent(stack: Any) -> None:
    """The primary's node stops (the primary itself keeps serving its region's direct
    writes): a replica node cannot know how far behind it is, so /readyz?max_lag= turns 503
    with the lag unknown -- it said 200, lag 0, for as long as the primary stayed silent --
    and 200 again once a primary node announces."""
    prefix = f"silent{uuid.uuid4().hex[:8]}"
    procs = {r: start_bus(stack, r, log_name=f"bus-{prefix}-{r}", WRITEBUS_PREFIX=prefix)
             for r in ("syd", "lax")}  # fmt: skip
    url = http_url(procs["lax"])

    def wait_for(code: int) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while (got := _get(f"{url}/readyz?max_lag=1"))[0] != code:
            assert time.monotonic() < deadline, f"readyz never answered {code}: {got}"
            time.sleep(0.2)
        return json.loads(got[1])

    try:
        wait_for(200)
        procs["syd"].stop(10)
        lag = wait_for(503)["checks"]["lag"]
        assert lag["ok"] is False and lag["seconds"] is None
        procs["syd"] = start_bus(stack, "syd", log_name=f"bus-{prefix}-syd-2",
                                 WRITEBUS_PREFIX=prefix)  # fmt: skip
        wait_for(200)
    finally:
        for p in procs.values():
            p.stop(10)


async def test_status_messages_are_readable_json_with_traffic(
    stack: Any, nodes: tuple[str, dict[str, BusProcess]], table: str
) -> None:
    """Each node publishes a JSON status on <prefix>.status.<region> once a second; syd's
    counts the writes it served and reports latency, pool and role; lax's reports its lag."""
    prefix, _ = nodes
    nc = await nats.connect(stack.nats_url("lax"))
    seen: dict[str, dict[str, Any]] = {}

    async def on(msg: Any) -> None:
        seen[msg.subject.rsplit(".", 1)[1]] = json.loads(msg.data)  # plain JSON

    try:
        await nc.subscribe(f"{prefix}.status.>", cb=on)
        async with Database(settings_for(stack, "lax", prefix=prefix)) as db:
            for i in range(3):
                await db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [f"s{i}"])
        deadline = time.monotonic() + 10
        while not (seen.get("syd", {}).get("served", 0) >= 3 and "lax" in seen):
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    syd, lax = seen["syd"], seen["lax"]
    assert syd["role"] == "primary" and syd["concurrency"] >= 1 and syd["pool_max"] >= 2
    assert syd["uptime"] > 0 and syd["version"] and "errors" in syd and "p99_ms" in syd
    assert lax["role"] == "replica" and lax["lag_bytes"] is not None and lax["lsn"]


async def test_progress_broadcasts_carry_lag_and_version(
    stack: Any, nodes: tuple[str, dict[str, BusProcess]]
) -> None:
    """A replica's LsnUpdate (msgpack, read with a plain msgpack library) now carries the
    primary position it heard, lag in bytes and seconds, the replay timestamp and its version;
    the version-1 fields are unchanged."""
    prefix, _ = nodes
    nc = await nats.connect(stack.nats_url("lax"))
    got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def on(msg: Any) -> None:
        upd = msgpack.unpackb(msg.data)
        if upd.get("primary_lsn") and not got.done():
            got.set_result(upd)

    try:
        await nc.subscribe(f"{prefix}.lsn.lax", cb=on)
        upd = await asyncio.wait_for(got, 10)
    finally:
        await nc.close()
    assert {"region", "replica_id", "lsn", "lsn_int", "time", "in_recovery", "role", "v"} <= set(upd)
    assert upd["role"] == "replica" and upd["lag_bytes"] >= 0 and upd["lag_seconds"] >= 0
    assert upd["version"] and isinstance(upd["replay_timestamp"], float)
    assert upd["lag_bytes"] == max(0, upd["primary_lsn_int"] - upd["lsn_int"])


async def test_nats_service_discovery_finds_every_node(
    stack: Any, nodes: tuple[str, dict[str, BusProcess]]
) -> None:
    """$SRV.INFO.writebus (what `nats micro ls` sends) is answered by each bus node with its
    region, prefix and version; both regions of this prefix answer."""
    prefix, _ = nodes
    nc = await nats.connect(stack.nats_url("syd"))
    infos: list[dict[str, Any]] = []

    async def on(msg: Any) -> None:
        infos.append(json.loads(msg.data))

    try:
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on)
        await nc.publish("$SRV.INFO.writebus", b"", reply=inbox)
        deadline = time.monotonic() + 10
        while {i["metadata"]["region"] for i in infos if i["metadata"]["prefix"] == prefix} != {
            "syd",
            "lax",
        }:
            assert time.monotonic() < deadline, infos
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    mine = [i for i in infos if i["metadata"]["prefix"] == prefix]
    assert all(i["name"] == "writebus" and i["metadata"]["writebus_version"] for i in mine)
