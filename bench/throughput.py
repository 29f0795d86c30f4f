"""Write throughput inside the primary region: the bus against psycopg and pgbench (issue #12).

Everything runs in the primary region, so no WAN hop is involved ("no delay"). One load
generator shape for psycopg and the bus -- one asyncio process, ``concurrency`` tasks each
writing in a loop -- so the comparison is fair on a small machine where the generator itself
needs CPU. pgbench (C, its own process) is the outside ceiling. Each configuration runs for a
warm-up, then a measured window; windows of all configurations are interleaved.

The configurations (:data:`BUS_CONFIGS` plus ``direct`` and ``pgbench``):

* ``writebus_1w_grouped`` -- one bus worker, defaults (group commit; uvloop when installed);
* ``writebus_1w_asyncio`` -- the same on the standard asyncio loop (the uvloop comparison);
* ``writebus_1w_single`` -- no grouping (``WRITEBUS_GROUP_MAX=1``, 64 slots): one transaction
  per write, as many at once as requests, as before group commit;
* ``writebus_1w_one_slot`` -- one fixed committer slot (``WRITEBUS_GROUP_CONNECTIONS=1``).
  The default has two, the second closed while the CPU is busy (:mod:`writebus.bus.cpuload`):
  on this machine, shared with Postgres and the load, the default should come close to one
  slot at c64; the second slot pays off when the database is a network hop away
  (docs/operations.md has both sides);
* ``writebus_1w_request_log`` -- the defaults with the worker's log at INFO, as deployed: one
  request log line per write (every other configuration logs warnings only), at c64, right
  beside ``writebus_1w_grouped``;
* ``writebus_1w_grouped_30ms`` and ``writebus_1w_single_30ms`` -- writes that spend 30 ms in
  their transaction (:data:`SLOW_WRITE_SQL`), at c16, through the grouped worker and the
  one-transaction-per-write worker, side by side: grouping must not cap them;
* ``writebus_2w`` -- two workers, for information (on 2 cores it measures CPU contention);
* ``writebus_1w_no_metrics`` -- ``WRITEBUS_HTTP_ADDR=off``, at c16 only (the metrics' cost);
  with ``writebus_1w_metrics_b``/``_c``/``_d`` and ``writebus_1w_no_metrics_b``/``_c``/``_d``,
  four worker processes of each kind: identical worker processes differ by up to 8 % in
  writes/s on this machine (their standard deviation is about 4 %), more than the metrics
  cost, so each side of that comparison is the mean of four processes
  (:data:`bench.config.METRICS_ON`, ``METRICS_OFF``).
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from bench.config import METRICS_OFF, METRICS_ON
from bench.harness import (
    INSERT_NO_ID_SQL,
    machine_busy_seconds,
    process_cpu_seconds,
    settings,
    start_buses,
    stop_buses,
)
from bench.pgbench import PgbenchError, run_pgbench
from bench.stats import percentile
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.stack import Stack
from writebus.client.db import Database

WriteFn = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class BusConfig:
    """Bus workers measured as one configuration: ``env`` on top of the defaults."""

    key: str
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    #: Measured at these concurrencies only (None: all).
    only_at: tuple[int, ...] | None = None
    #: Always measured right beside this configuration (an A/B pair, see :func:`slice_order`).
    beside: str | None = None


BUS_CONFIGS = (
    BusConfig("writebus_1w_grouped"),
    BusConfig("writebus_1w_asyncio", {"WRITEBUS_EVENT_LOOP": "asyncio"}),
    # As before group commit: one transaction per write, as many at once as requests.
    BusConfig("writebus_1w_single", {"WRITEBUS_GROUP_MAX": "1", "WRITEBUS_GROUP_CONNECTIONS": "64"}),
    BusConfig("writebus_1w_one_slot", {"WRITEBUS_GROUP_CONNECTIONS": "1"}),
    # The default request log (one line per request at INFO), beside the grouped worker whose
    # logs are at WARNING like every other configuration's, at c64.
    BusConfig(
        "writebus_1w_request_log",
        {"WRITEBUS_LOG_LEVEL": "info"},
        only_at=(64,),
        beside="writebus_1w_grouped",
    ),
    BusConfig("writebus_2w", workers=2),
    # The metrics' cost: more worker processes with metrics (the first is the grouped one
    # above), each beside one without, at c16.
    *(BusConfig(on, only_at=(16,)) for on in METRICS_ON[1:]),
    *(
        BusConfig(off, {"WRITEBUS_HTTP_ADDR": "off"}, only_at=(16,), beside=on)
        for on, off in zip(METRICS_ON, METRICS_OFF, strict=True)
    ),
)
#: A write that spends 30 ms in its transaction: under the committer's 50 ms budget, so its
#: groups never stall -- the writes two committer slots used to cap (bus/committer.py).
SLOW_WRITE_SQL = "INSERT INTO bench_writes(approach, body) SELECT %s, %s FROM pg_sleep(0.03)"
#: Those writes through the grouped worker and the one-transaction-per-write worker, side by
#: side at c16: ``{key: the bus config whose workers serve it}``.
SLOW_CONFIGS = {
    "writebus_1w_grouped_30ms": "writebus_1w_grouped",
    "writebus_1w_single_30ms": "writebus_1w_single",
}
SLOW_AT = (16,)
#: ``{config: the config it is measured beside}``.
PAIRS = {cfg.key: cfg.beside for cfg in BUS_CONFIGS if cfg.beside is not None} | {
    "writebus_1w_single_30ms": "writebus_1w_grouped_30ms"
}


def slice_order(keys: Sequence[str], r: int, pairs: dict[str, str]) -> list[str]:
    """The order the configurations ``keys`` run in, in slice ``r``.

    Rotated by ``r``, so no configuration always runs first or always after the same one. A
    configuration paired with another (``pairs[b] == a``) runs right beside it: after it in
    even slices, before it in odd ones (AB BA AB BA). A comparison of the two -- the metrics'
    cost -- then sees the same moment of the machine, and a slow drift cancels out.
    """
    followers = {b for b, a in pairs.items() if b in keys and a in keys}
    lead = [k for k in keys if k not in followers]
    turn = r % len(lead) if lead else 0
    out: list[str] = []
    for key in lead[turn:] + lead[:turn]:
        mine = [b for b in keys if b in followers and pairs[b] == key]
        out += mine + [key] if r % 2 else [key] + mine
    return out


@dataclass(frozen=True)
class Slice:
    """One measured window of one configuration."""

    writes: int
    seconds: float
    latencies_ms: list[float]
    client_cpu_s: float
    server_cpu_s: float
    machine_busy_s: float
    machine_total_s: float
    #: Group commits and the requests in them during the window (bus workers with metrics).
    groups: float = 0.0
    grouped: float = 0.0
    #: pgbench's own mean latency (it reports no percentiles without a log).
    latency_avg_ms: float = math.nan


@dataclass(frozen=True)
class Run:
    """One configuration at one concurrency, over all its slices.

    ``machine_cpu_ms_per_write`` is the CPU the whole machine spent per write (every process:
    load generator, bus workers, nats-server, Postgres, the replica). On a machine where all of
    them share a few cores, writes/s is about ``cores * 1000`` over it. ``mean_group`` is the
    requests per group commit (NaN where the worker exports no metrics).
    """

    wps: float
    writes: int
    seconds: float
    p50_ms: float
    p99_ms: float
    client_cpu_ms_per_write: float
    server_cpu_ms_per_write: float
    machine_cpu_ms_per_write: float
    machine_busy: float
    mean_group: float
    latency_avg_ms: float

    @classmethod
    def of(cls, slices: Sequence[Slice]) -> Run:
        """Combine the slices of one configuration."""
        writes = sum(s.writes for s in slices)
        seconds = sum(s.seconds for s in slices)
        busy = sum(s.machine_busy_s for s in slices)
        total = sum(s.machine_total_s for s in slices)
        latencies = [x for s in slices for x in s.latencies_ms]
        groups = sum(s.groups for s in slices)
        per = max(writes, 1)
        return cls(
            wps=writes / seconds if seconds else 0.0,
            writes=writes,
            seconds=seconds,
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            client_cpu_ms_per_write=sum(s.client_cpu_s for s in slices) * 1000 / per,
            server_cpu_ms_per_write=sum(s.server_cpu_s for s in slices) * 1000 / per,
            machine_cpu_ms_per_write=busy * 1000 / per,
            machine_busy=busy / total if total else 0.0,
            mean_group=sum(s.grouped for s in slices) / groups if groups else math.nan,
            latency_avg_ms=(
                sum(s.latency_avg_ms * s.writes for s in slices) / per
                if any(not math.isnan(s.latency_avg_ms) for s in slices)
                else math.nan
            ),
        )

    def as_dict(self) -> dict[str, float]:
        """Rounded values for the report."""
        return {k: round(float(v), 3) for k, v in self.__dict__.items()}


def group_counts(procs: Sequence[BusProcess]) -> tuple[float, float]:
    """``(group commits, requests in them)`` so far, summed over bus processes (scraped from
    their /metrics); (0, 0) for processes without an HTTP listener."""
    from prometheus_client.parser import text_string_to_metric_families

    groups = grouped = 0.0
    for proc in procs:
        addr = proc.env.get("WRITEBUS_HTTP_ADDR", "off")
        if addr == "off":
            continue
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "writebus_group_commits_total":
                    groups += sample.value
                elif sample.name == "writebus_group_requests_total":
                    grouped += sample.value
    return groups, grouped


async def drive(
    write: WriteFn,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    servers: Sequence[BusProcess] = (),
) -> Slice:
    """Run ``concurrency`` tasks calling ``write`` in a loop; measure after ``warmup`` seconds."""
    measuring = False
    stop = False
    count = 0
    latencies: list[float] = []
    pids = [p.pid for p in servers if p.pid]

    async def loop(k: int) -> None:
        nonlocal count
        i = 0
        while not stop:
            i += 1
            t0 = time.perf_counter()
            await write(k * 1_000_000_000 + i)
            if measuring:
                count += 1
                latencies.append((time.perf_counter() - t0) * 1000)

    tasks = [asyncio.create_task(loop(k), name=f"bench-load-{k}") for k in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        groups0 = await asyncio.to_thread(group_counts, servers)
        client0 = time.process_time()
        server0 = sum(process_cpu_seconds(p) for p in pids)
        busy0, total0 = machine_busy_seconds()
        t0 = time.perf_counter()
        measuring = True
        await asyncio.sleep(seconds)
        measuring = False
        elapsed = time.perf_counter() - t0
        writes = count
        client = time.process_time() - client0
        server = sum(process_cpu_seconds(p) for p in pids) - server0
        busy1, total1 = machine_busy_seconds()
    finally:
        stop = True
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    groups1 = await asyncio.to_thread(group_counts, servers)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise RuntimeError(f"{len(failures)} of {concurrency} load tasks failed") from failures[0]
    return Slice(
        writes=writes,
        seconds=elapsed,
        latencies_ms=latencies,
        client_cpu_s=client,
        server_cpu_s=server,
        machine_busy_s=busy1 - busy0,
        machine_total_s=total1 - total0,
        groups=groups1[0] - groups0[0],
        grouped=groups1[1] - groups0[1],
    )


async def pgbench_slice(url: str, *, concurrency: int, seconds: float) -> Slice:
    """One pgbench window as a :class:`Slice`."""
    got = await run_pgbench(url, concurrency=concurrency, seconds=seconds)
    return Slice(
        writes=int(got["writes"]),
        seconds=got["seconds"],
        latencies_ms=[],
        client_cpu_s=got["client_cpu_s"],
        server_cpu_s=0.0,
        machine_busy_s=got["machine_busy_s"],
        machine_total_s=got["machine_total_s"],
        latency_avg_ms=got["latency_avg_ms"],
    )


SliceFn = Callable[[int, float], Awaitable[Slice]]


async def measure(
    stack: Stack,
    *,
    concurrencies: Sequence[int],
    seconds: float,
    warmup: float,
    slices: int = 1,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, dict[str, Run]]:
    """``{"direct"|"pgbench"|<bus config>: {"c1": Run, ...}}``.

    Each configuration runs ``seconds`` in all, as ``slices`` windows interleaved with the other
    configurations' (each after ``warmup`` seconds of unmeasured load), so a noisy moment on
    the machine does not land on one configuration only.
    """
    max_c = max(concurrencies)
    workers: dict[str, list[BusProcess]] = {}
    dbs: dict[str, Database] = {}
    pool = AsyncConnectionPool(
        stack.primary.url,
        min_size=max_c,
        max_size=max_c,
        kwargs={"autocommit": True},
        open=False,
        name="bench-direct",
    )
    await pool.open(wait=True, timeout=30)
    results: dict[str, dict[str, Run]] = {}
    try:
        for cfg in BUS_CONFIGS:
            prefix = f"bench_{cfg.key}"
            workers[cfg.key] = await start_buses(
                stack, stack.primary_region, prefix=prefix, count=cfg.workers,
                max_concurrency=max_c, name=f"bus-{cfg.key}", env=cfg.env,
            )  # fmt: skip
            # A client on the primary region's NATS server that still goes through the bus
            # (it declares itself outside the primary region and does not wait for replay).
            s = settings(stack, stack.primary_region, prefix=prefix).replace(
                region=stack.replica_region
            )
            dbs[cfg.key] = Database(s, max_size=1)
            await dbs[cfg.key].open()

        async def direct(seq: int) -> None:
            async with pool.connection() as conn:
                async with conn.transaction():
                    await conn.execute(INSERT_NO_ID_SQL, ["tp_direct", str(seq)])

        def via_bus(db: Database, tag: str, sql: str = INSERT_NO_ID_SQL) -> WriteFn:
            async def write(seq: int) -> None:
                await db.execute(sql, [tag, str(seq)], await_replication=False)

            return write

        def driven(write: WriteFn, servers: Sequence[BusProcess] = ()) -> SliceFn:
            def run(c: int, secs: float) -> Awaitable[Slice]:
                return drive(write, concurrency=c, seconds=secs, warmup=warmup, servers=servers)

            return run

        async def pgbench(c: int, secs: float) -> Slice:
            return await pgbench_slice(stack.primary.url, concurrency=c, seconds=secs)

        configs: list[tuple[str, SliceFn, tuple[int, ...] | None]] = [
            ("direct", driven(direct), None),
            *(
                (cfg.key, driven(via_bus(dbs[cfg.key], cfg.key), workers[cfg.key]), cfg.only_at)
                for cfg in BUS_CONFIGS
            ),
            *(
                (key, driven(via_bus(dbs[bus], key, SLOW_WRITE_SQL), workers[bus]), SLOW_AT)
                for key, bus in SLOW_CONFIGS.items()
            ),
            ("pgbench", pgbench, None),
        ]
        for key, _, _ in configs:  # connections opened, statements prepared, pools grown
            if key != "pgbench":
                await dict((k, f) for k, f, _ in configs)[key](max_c, 0.0)
        failed: dict[str, str] = {}
        for c in concurrencies:
            here = [x for x in configs if x[2] is None or c in x[2]]
            progress(f"throughput c{c}: {len(here)} configurations")
            done: dict[str, list[Slice]] = {key: [] for key, _, _ in here}
            runs = {key: run for key, run, _ in here}
            for r in range(slices):
                for key in slice_order(list(runs), r, PAIRS):
                    run = runs[key]
                    if key in failed:
                        continue
                    try:
                        done[key].append(await run(c, seconds / slices))
                    except PgbenchError as exc:
                        failed[key] = str(exc)
                        progress(f"{key}: {exc}")
            for key, got in done.items():
                if got:
                    results.setdefault(key, {})[f"c{c}"] = Run.of(got)
    finally:
        for db in dbs.values():
            await db.close()
        await pool.close()
        for procs in workers.values():
            await stop_buses(procs)
    return results
