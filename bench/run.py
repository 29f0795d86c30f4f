"""``writebus bench``: every measurement of issue #3 in one run, then the table, JSON and plot.

Phases, all on one two-region stack (primary ``syd``, replica ``lax``, one-way WAN delay ``D``):

1. read-your-write from ``lax``: writebus, floor, poll_100ms, poll_50ms, direct_wan interleaved
   with two baselines (a bare WAN round trip, a NATS request/reply through the gateway);
   then, with the replica as a synchronous standby, remote_apply from ``lax`` interleaved with
   primary-region writes under the same setting;
2. a 10-statement atomic change from ``lax``: one bus batch vs an interactive WAN transaction;
3. primary-region writes: the client library vs plain psycopg, interleaved;
4. tracker scale: 10,000 waiters in this process, and the heap's release cost;
5. throughput inside ``syd`` (no WAN): psycopg pool vs the bus with 1 and 2 worker processes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench import reads, throughput, tracker_scale
from bench.approaches import (
    DirectLocal,
    Floor,
    InteractiveWanBatch,
    LocalRyw,
    NatsEcho,
    PollRyw,
    WanRoundTrip,
    WanRyw,
    WritebusBatch,
    WritebusLocal,
    WritebusRyw,
)
from bench.config import BenchConfig
from bench.harness import PREFIX, create_table, settings, start_buses, start_stack
from bench.polling import ReplayPoller
from bench.report import evaluate_targets, table
from bench.ryw_sync import SyncWritebusRyw
from bench.sampling import Sample, interleave
from bench.stats import percentile, summary
from bench.sync_standby import REMOTE_APPLY, synchronous_standby
from writebus.bus import partitions
from writebus.bus.embedded.stack import Stack
from writebus.client.connect import connect_nats
from writebus.client.db import Database
from writebus.client.sync import SyncDatabase

#: Measured with the read-your-write approaches but reported apart: what the WAN costs alone.
BASELINES = ("wan_rtt", "nats_echo")
#: Where the plot goes when neither ``--plot`` nor ``--json`` is given.
DEFAULT_PLOT = Path(__file__).resolve().parent / "results.png"


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def _connect(url: str, *setup: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    for sql in setup:
        await conn.execute(sql)
    return conn


def _ms(samples: list[Sample]) -> list[float]:
    return [s.ms for s in samples]


def _parts_p50(samples: list[Sample]) -> dict[str, float]:
    keys = samples[0].parts.keys() if samples else ()
    return {k: round(percentile([s.parts[k] for s in samples], 50), 3) for k in keys}


async def _ryw(stack: Stack, cfg: BenchConfig) -> dict[str, list[Sample]]:
    lax, syd = stack.replica_region, stack.primary_region
    wan_url = stack.primary_url_from(lax)
    pollers = [
        ReplayPoller(stack.database_url(lax), interval=0.100),
        ReplayPoller(stack.database_url(lax), interval=0.050),
    ]
    sync_db = SyncDatabase(settings(stack, lax))
    await asyncio.to_thread(sync_db.open)
    async with Database(settings(stack, lax)) as db:
        floor_conn = await _connect(wan_url)
        direct_conn = await _connect(wan_url)
        rtt_conn = await _connect(wan_url)
        responder = await connect_nats(settings(stack, syd), name="bench-echo")
        echo_subject = f"{PREFIX}.bench-echo"

        async def echo(msg: Any) -> None:
            await responder.publish(msg.reply, b"x")

        await responder.subscribe(echo_subject, cb=echo)
        await responder.flush()
        for p in pollers:
            await p.start()
        try:
            _progress(
                f"read-your-write from {lax}: {cfg.ryw_rounds} rounds of 6 approaches "
                "and 2 baselines"
            )
            out = await interleave(
                [
                    WritebusRyw(db),
                    SyncWritebusRyw(sync_db),
                    Floor(floor_conn),
                    PollRyw("poll_100ms", db, pollers[0]),
                    PollRyw("poll_50ms", db, pollers[1]),
                    WanRyw("direct_wan", direct_conn, db),
                    WanRoundTrip(rtt_conn),
                    NatsEcho(db.nats, echo_subject),
                ],
                rounds=cfg.ryw_rounds,
                warmup=cfg.warmup,
            )
        finally:
            for p in pollers:
                await p.close()
            await floor_conn.close()
            await direct_conn.close()
            await rtt_conn.close()
            await responder.close()
            await asyncio.to_thread(sync_db.close)
        _progress(f"remote_apply: {cfg.remote_apply_rounds} rounds, replica as synchronous standby")
        async with synchronous_standby(stack):
            ra_conn = await _connect(wan_url, REMOTE_APPLY)
            syd_conn = await _connect(stack.primary.url, REMOTE_APPLY)
            try:
                out |= await interleave(
                    [
                        WanRyw("remote_apply", ra_conn, db),
                        LocalRyw("remote_apply_syd_local", syd_conn),
                    ],
                    rounds=cfg.remote_apply_rounds,
                    warmup=cfg.warmup,
                )
            finally:
                await ra_conn.close()
                await syd_conn.close()
    return out


async def _reads(stack: Stack, cfg: BenchConfig) -> dict[str, list[Sample]]:
    lax = stack.replica_region
    _progress(f"reads in {lax}: {cfg.ryw_rounds} rounds of 6 kinds")
    async with Database(settings(stack, lax)) as db:
        wan = await _connect(stack.primary_url_from(lax))
        try:
            return await interleave(
                await reads.approaches(db, wan), rounds=cfg.ryw_rounds, warmup=cfg.warmup
            )
        finally:
            await wan.close()


async def _batch(stack: Stack, cfg: BenchConfig) -> dict[str, list[Sample]]:
    lax = stack.replica_region
    _progress(f"10-statement change from {lax}: {cfg.batch_rounds} rounds")
    async with Database(settings(stack, lax)) as db:
        conn = await _connect(stack.primary_url_from(lax))
        try:
            return await interleave(
                [WritebusBatch(db), InteractiveWanBatch(conn)],
                rounds=cfg.batch_rounds,
                warmup=cfg.warmup,
            )
        finally:
            await conn.close()


async def _primary_local(stack: Stack, cfg: BenchConfig) -> dict[str, list[Sample]]:
    syd = stack.primary_region
    _progress(f"primary-region writes in {syd}: {cfg.local_rounds} rounds")
    pool = AsyncConnectionPool(
        stack.primary.url, min_size=1, max_size=10, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True, timeout=30)
    try:
        async with Database(settings(stack, syd)) as db:
            return await interleave(
                [WritebusLocal(db), DirectLocal(pool)],
                rounds=cfg.local_rounds,
                warmup=cfg.warmup * 5,
            )
    finally:
        await pool.close()


async def _tracker(stack: Stack, cfg: BenchConfig) -> dict[str, Any]:
    n = cfg.tracker_waiters
    _progress(f"tracker: {n} waiters")
    at_once, bare, p99s = await tracker_scale.wake_all_side_by_side(
        stack, waiters=n, repeats=cfg.tracker_repeats
    )
    batched, batched_p99s = await tracker_scale.wake_repeated(
        stack, waiters=n, per_broadcast=cfg.tracker_batch, repeats=cfg.tracker_repeats
    )
    release = {
        str(size): tracker_scale.release_cost(size, cfg.scaling_release)
        for size in cfg.scaling_sizes
    }
    head = at_once.as_dict()
    return {
        "waiters": n,
        "wake_p50_ms": head["wake_p50_ms"],
        "wake_p99_ms": head["wake_p99_ms"],
        "cpu_s": head["cpu_s"],
        "all_at_once": head,
        "batched": batched.as_dict(),
        "batched_p99s_ms": batched_p99s,
        "bare_asyncio": bare,
        "wake_all_p99s_ms": p99s,
        "release_count": cfg.scaling_release,
        "release": release,
    }


async def _idempotency_usage(stack: Stack) -> tuple[int, int]:
    """(bytes, rows) of the exactly-once table on the primary."""
    async with await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True) as conn:
        size = await partitions.size_bytes(conn)
        cur = await conn.execute("SELECT count(*) FROM writebus.applied")
        row = await cur.fetchone()
    return size, int(row[0]) if row else 0


async def collect(cfg: BenchConfig) -> dict[str, Any]:
    """Start a stack, run every phase, stop the stack; return the report (without targets)."""
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    _progress(f"starting a two-region stack, one-way delay {cfg.delay_ms} ms")
    stack = await start_stack(cfg.delay_ms)
    try:
        await asyncio.gather(
            start_buses(stack, stack.primary_region, prefix=PREFIX),
            start_buses(stack, stack.replica_region, prefix=PREFIX),
        )
        await create_table(stack)
        ryw = await _ryw(stack, cfg)
        baselines = {name: ryw.pop(name) for name in BASELINES}
        read_samples = await _reads(stack, cfg)
        batch = await _batch(stack, cfg)
        local = await _primary_local(stack, cfg)
        tracker = await _tracker(stack, cfg)
        _progress(f"throughput: {cfg.throughput_seconds} s per configuration")
        stored0 = await _idempotency_usage(stack)
        tp = await throughput.measure(
            stack,
            concurrencies=cfg.concurrencies,
            seconds=cfg.throughput_seconds,
            warmup=cfg.throughput_warmup_seconds,
            slices=cfg.throughput_slices,
            progress=_progress,
        )
        stored1 = await _idempotency_usage(stack)
    finally:
        await asyncio.to_thread(stack.stop)
    return {
        "one_way_delay_ms": cfg.delay_ms,
        "quick": cfg.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Other work on the machine skews every number: the 1-minute load average at the
            # start and end of the run says how quiet it was (this run adds about 1-2 itself).
            "loadavg_start": round(load_start, 2),
            "loadavg_end": round(os.getloadavg()[0], 2),
        },
        "config": {k: v for k, v in cfg.__dict__.items()},
        "ryw_ms": {name: summary(_ms(s)) for name, s in ryw.items()},
        "stale_reads": {name: sum(x.stale for x in s) for name, s in ryw.items()},
        "ryw_parts_p50_ms": {
            name: _parts_p50(s) for name, s in ryw.items() if s and s[0].parts
        },
        "baselines_ms": {name: summary(_ms(s)) for name, s in baselines.items()},
        "reads_ms": {name: summary(_ms(s)) for name, s in read_samples.items()},
        "stale_read_samples": {name: sum(x.stale for x in s) for name, s in read_samples.items()},
        "batch10_ms": {name: summary(_ms(s)) for name, s in batch.items()},
        "throughput_wps": {
            name: {c: round(r.wps, 1) for c, r in runs.items()} for name, runs in tp.items()
        },
        "throughput_detail": {
            name: {c: r.as_dict() for c, r in runs.items()} for name, runs in tp.items()
        },
        # Marginal storage of the exactly-once record: bytes added per row added.
        "idempotency_bytes_per_write": (stored1[0] - stored0[0]) / max(1, stored1[1] - stored0[1]),
        "idempotency_rows_measured": stored1[1] - stored0[1],
        "tracker": tracker,
        "primary_local_ms": {name: summary(_ms(s)) for name, s in local.items()},
        "samples_ms": {
            "ryw": {name: [round(x, 3) for x in _ms(s)] for name, s in ryw.items()},
            "batch10": {name: [round(x, 3) for x in _ms(s)] for name, s in batch.items()},
            "primary_local": {name: [round(x, 3) for x in _ms(s)] for name, s in local.items()},
        },
        "duration_s": round(time.perf_counter() - started, 1),
    }


def run_bench(
    *,
    quick: bool = False,
    json_path: str | None = None,
    plot_path: str | None = None,
    delay_ms: float = 25.0,
    samples: int | None = None,
) -> int:
    """Run the benchmarks, print the table, write the JSON report and the PNG plot.

    ``samples`` (tests and CI) overrides every sample count with a tiny one. Returns the exit
    code: 1 when a writebus read was stale (a correctness failure: a read-your-write, or a
    read of a row already replayed or awaited by token), else 0. Timings never fail.
    """
    if samples is not None:
        cfg = BenchConfig.tiny(samples=samples, delay_ms=delay_ms)
    elif quick:
        cfg = BenchConfig.quick_run(delay_ms=delay_ms)
    else:
        cfg = BenchConfig.full(delay_ms=delay_ms)
    report = asyncio.run(collect(cfg))
    report["targets"] = [t.as_dict() for t in evaluate_targets(report)]
    text = table(report)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(_json_safe(report), indent=1, allow_nan=False))
        _progress(f"JSON report: {json_path}")
    plot = Path(plot_path) if plot_path else (
        Path(json_path).with_suffix(".png") if json_path else DEFAULT_PLOT
    )
    from bench.plot import write_plot

    write_plot(plot, report)
    _progress(f"plot: {plot}")
    stale = report["stale_reads"]["writebus"] + report["stale_reads"]["writebus_sync"]
    return 1 if stale or any(report["stale_read_samples"].values()) else 0


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN (a measurement that could not be made) as ``null``."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
