"""``writebus drill failover``: crash the primary under load, promote the standby, measure.

On an embedded two-region stack (:class:`~writebus.bus.embedded.stack.Stack`) with a bus node
per region, an app in each region writes at a steady rate -- ``syd`` directly to its primary,
``lax`` through the bus -- each write with its own request id and a unique key. Then:

1. the ``syd`` primary is crashed (``kill()``: SIGKILL, as a power cut would -- a fast shutdown
   would first ship all its WAL to the standby and hide the loss being measured);
2. the standby's WAL position is read (received and replayed), and the ``lax`` standby is
   promoted;
3. the writes go on with no app restart and no change to its environment: the ``syd`` app falls
   back to the bus, whose ``lax`` node has switched to the primary role.

Once both regions have written again for a while the load stops, the new primary is read key by
key and :func:`writebus.bus.drillreport.summarize` judges the run. With ``synchronous=True`` the
stack makes the standby synchronous, and no acknowledged write may be lost. The decisions live
in :mod:`~writebus.bus.drillreport`, the load in :mod:`~writebus.bus.drillload`; this module
does the I/O around them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable

import psycopg

from writebus.bus.drillload import CREATE_TABLE, TABLE, DrillLoad
from writebus.bus.drilloptions import DrillOptions
from writebus.bus.drilloutput import drill_json, exit_code, render
from writebus.bus.drillreport import Failover, Mode, ModeReport, summarize
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.stack import Stack
from writebus.client.db import Database
from writebus.client.lsn import format_lsn, parse_lsn
from writebus.client.settings import Settings
from writebus.client.subjects import Subjects

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """A :data:`Progress` that says nothing."""


async def run_drill(options: DrillOptions, progress: Progress = _quiet) -> list[ModeReport]:
    """Drill each mode in ``options.modes`` on a fresh stack of its own, one after the other."""
    reports = []
    for mode in options.modes:
        stack = Stack(one_way_delay_ms=options.delay_ms, synchronous=mode == "sync")
        progress(f"{mode}: starting a two-region stack (WAN delay {options.delay_ms:g} ms)")
        await asyncio.to_thread(stack.start, timeout=options.stack_timeout)
        try:
            reports.append(await failover_on(stack, mode=mode, options=options, progress=progress))
        finally:
            await asyncio.to_thread(stack.stop)
    return reports


async def failover_on(
    stack: Stack, *, mode: Mode, options: DrillOptions, progress: Progress = _quiet
) -> ModeReport:
    """Run the drill on a started ``stack`` whose primary has not failed yet.

    The stack is left as the drill leaves it -- old primary crashed, standby promoted -- so a
    caller can look at the new primary itself. Bus nodes the drill started stop with the stack.
    """
    old, new = stack.regions
    buses = {region: stack.start_bus(region, env={"WRITEBUS_LOG_FORMAT": "json"},
                                     log_name=f"drill-bus-{region}")
             for region in stack.regions}  # fmt: skip
    for bus in buses.values():
        await asyncio.to_thread(bus.wait_ready, options.stack_timeout)
    # Until the other region's gateway knows of the write subscription, a request from there
    # would find no worker.
    write_subject = Subjects(Settings.from_env(stack.env(old)).prefix).write
    await asyncio.to_thread(stack.nats[new].wait_gateway_interest, old, [write_subject],
                            timeout=options.stack_timeout)  # fmt: skip
    await asyncio.to_thread(_prepare, stack)
    standby_state = await asyncio.to_thread(_standby_state, stack)
    tag = f"{mode}-{uuid.uuid4().hex[:8]}"
    dbs = {region: Database(_settings(stack, region, options)) for region in stack.regions}
    load: DrillLoad | None = None
    try:
        for db in dbs.values():
            await db.open()
            for i in range(3):  # connections and the gateway's interest, before measuring
                await db.execute(
                    f"INSERT INTO {TABLE}(key, region, request_id) VALUES (%s, %s, '')",
                    [f"warmup-{tag}-{db.settings.region}-{i}", db.settings.region],
                )
        load = DrillLoad(dbs, rate=options.rate, tag=tag, rpc_timeout=options.rpc_timeout)
        progress(f"{mode}: writing {options.rate:g}/s from {old} (direct) and {new} (bus) "
                 f"for {options.duration:g} s")  # fmt: skip
        load.start()
        target = round(options.duration * options.rate)
        await load.wait_until(
            lambda ld: min(ld.started.values()) >= target, options.duration + 30
        )
        failover = await _fail_over(stack, load, progress=progress, mode=mode)
        settle = max(1, round(options.settle * options.rate))
        resumed = await load.wait_until(
            lambda ld: all(ld.acked[region, new] >= settle for region in stack.regions),
            options.resume_timeout,
        )
        progress(f"{mode}: writes {'resumed' if resumed else 'DID NOT resume'} in both "
                 f"regions; draining")  # fmt: skip
        await load.drain(options.rpc_timeout + 5)
    finally:
        if load is not None:
            await load.drain(0)  # after a failure above: stop the writers before closing
        for db in dbs.values():
            await db.close()
    counts = await asyncio.to_thread(_counts, stack.replica.url, tag)
    report = summarize(
        mode, load.records, failover, counts, regions=stack.regions, standby_state=standby_state
    )
    report.extra.update(
        tag=tag,
        delay_ms=options.delay_ms,
        rate_per_region=options.rate,
        duration_s=options.duration,
        old_node_fenced=_logged(buses[old], "bus.fenced"),
        new_node_promoted=_logged(buses[new], "bus.promoted"),
    )
    return report


async def _fail_over(stack: Stack, load: DrillLoad, *, progress: Progress, mode: Mode) -> Failover:
    """Crash the primary, read how far the standby got, promote it."""
    old, new = stack.regions
    crash_at = load.now()
    await asyncio.to_thread(stack.primary.kill)
    progress(f"{mode}: crashed the {old} primary at {crash_at:.2f} s")
    standby_lsn = await asyncio.to_thread(standby_position, stack.replica.url)
    await asyncio.to_thread(stack.replica.promote)
    promoted_at = load.now()
    progress(f"{mode}: promoted the {new} standby (from {format_lsn(standby_lsn)}) at "
             f"{promoted_at:.2f} s")  # fmt: skip
    return Failover(
        old_region=old, new_region=new, crash_at=crash_at, standby_lsn=standby_lsn,
        promoted_at=promoted_at,
    )  # fmt: skip


def standby_position(url: str, *, timeout: float = 10.0) -> int:
    """How far a standby whose primary is gone has got: the WAL it received (flushed), once
    its WAL receiver has stopped streaming and replay has caught up with it (promotion
    replays all of it). After ``timeout`` the position reached so far is returned."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        while True:
            row = conn.execute(
                "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
                "EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')"
            ).fetchone()
            assert row is not None
            received = parse_lsn(row[0]) if row[0] else 0
            replayed = parse_lsn(row[1]) if row[1] else 0
            if (not row[2] and replayed >= received) or time.monotonic() >= deadline:
                return max(received, replayed)
            time.sleep(0.01)


def _prepare(stack: Stack) -> None:
    with psycopg.connect(stack.primary.url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(CREATE_TABLE)
    stack.wait_replica_caught_up(30)


def _standby_state(stack: Stack) -> str | None:
    """``sync`` or ``async``: how the primary treats its standby (pg_stat_replication)."""
    rows = stack.primary.execute(
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
        [stack.replica.name],
    )
    return str(rows[0][0]) if rows else None


def _settings(stack: Stack, region: str, options: DrillOptions) -> Settings:
    """The app's settings in ``region``: the stack's environment, the drill's timeouts."""
    return Settings.from_env(stack.env(region)).replace(
        rpc_timeout=options.rpc_timeout, replication_timeout=options.replication_timeout
    )


def _counts(url: str, tag: str) -> dict[str, int]:
    """Rows per key of this drill's writes on the database at ``url`` (the new primary)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            f"SELECT key, count(*) FROM {TABLE} WHERE key LIKE %s GROUP BY key", [f"{tag}-%"]
        ).fetchall()
    return {str(key): int(n) for key, n in rows}


def _logged(bus: BusProcess, event: str) -> bool:
    return f'"{event}"' in bus.log_path.read_text(errors="replace")


def main(options: DrillOptions, *, as_json: bool = False) -> int:
    """Run the drill and print its report (text, or one JSON object); return the exit code:
    0 when every mode held its invariants, 1 otherwise."""
    out = sys.stderr if as_json else sys.stdout

    def progress(message: str) -> None:
        print(message, file=out, flush=True)

    reports = asyncio.run(run_drill(options, progress))
    if as_json:
        print(json.dumps(drill_json(reports), indent=2))
    else:
        print(render(reports))
    return exit_code(reports)
