"""Write throughput inside the primary region: the bus (1 and 2 worker processes) vs psycopg.

Everything runs in the primary region, so no WAN hop is involved ("no delay"). One load
generator shape for every configuration -- one asyncio process, ``concurrency`` tasks each
writing in a loop -- so the comparison is fair on a small machine where the generator itself
needs CPU. Each configuration runs for a warm-up, then a fixed measured window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from bench.harness import (
    INSERT_NO_ID_SQL,
    machine_busy_seconds,
    process_cpu_seconds,
    settings,
    start_buses,
    stop_buses,
)
from bench.stats import percentile
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.stack import Stack
from writebus.client.db import Database

WriteFn = Callable[[int], Awaitable[None]]


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


@dataclass(frozen=True)
class Run:
    """One configuration, over all its slices.

    ``machine_cpu_ms_per_write`` is the CPU the whole machine spent per write (every process:
    load generator, bus workers, nats-server, Postgres, the WAN proxy, the replica). On a machine
    where all of them share a few cores, writes/s is about ``cores * 1000`` over it.
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

    @classmethod
    def of(cls, slices: Sequence[Slice]) -> Run:
        """Combine the slices of one configuration."""
        writes = sum(s.writes for s in slices)
        seconds = sum(s.seconds for s in slices)
        busy = sum(s.machine_busy_s for s in slices)
        total = sum(s.machine_total_s for s in slices)
        latencies = [x for s in slices for x in s.latencies_ms]
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
        )

    def as_dict(self) -> dict[str, float]:
        """Rounded values for the report."""
        return {k: round(float(v), 3) for k, v in self.__dict__.items()}


async def drive(
    write: WriteFn,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    server_pids: Sequence[int] = (),
) -> Slice:
    """Run ``concurrency`` tasks calling ``write`` in a loop; measure after ``warmup`` seconds."""
    measuring = False
    stop = False
    count = 0
    latencies: list[float] = []

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
        client0 = time.process_time()
        server0 = sum(process_cpu_seconds(p) for p in server_pids)
        busy0, total0 = machine_busy_seconds()
        t0 = time.perf_counter()
        measuring = True
        await asyncio.sleep(seconds)
        measuring = False
        elapsed = time.perf_counter() - t0
        writes = count
        client = time.process_time() - client0
        server = sum(process_cpu_seconds(p) for p in server_pids) - server0
        busy1, total1 = machine_busy_seconds()
    finally:
        stop = True
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
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
    )


async def measure(
    stack: Stack,
    *,
    concurrencies: Sequence[int],
    seconds: float,
    warmup: float,
    slices: int = 1,
) -> dict[str, dict[str, Run]]:
    """``{"direct"|"writebus_1w"|"writebus_2w": {"c1": Run, ...}}``.

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
    results: dict[str, dict[str, Run]] = {"direct": {}, "writebus_1w": {}, "writebus_2w": {}}
    try:
        for n in (1, 2):
            key = f"writebus_{n}w"
            prefix = f"bench_tp{n}w"
            workers[key] = await start_buses(
                stack, stack.primary_region, prefix=prefix, count=n, max_concurrency=max_c,
                name=f"bus-tp{n}w",
            )
            # A client on the primary region's NATS server that still goes through the bus
            # (it declares itself outside the primary region and does not wait for replay).
            s = settings(stack, stack.primary_region, prefix=prefix).replace(
                region=stack.replica_region
            )
            dbs[key] = Database(s, max_size=1)
            await dbs[key].open()

        async def direct(seq: int) -> None:
            async with pool.connection() as conn:
                async with conn.transaction():
                    await conn.execute(INSERT_NO_ID_SQL, ["tp_direct", str(seq)])

        def via_bus(db: Database, tag: str) -> WriteFn:
            async def write(seq: int) -> None:
                await db.execute(INSERT_NO_ID_SQL, [tag, str(seq)], await_replication=False)

            return write

        configs: list[tuple[str, WriteFn, list[int]]] = [
            ("direct", direct, []),
            *(
                (key, via_bus(dbs[key], f"tp_{key}"), [p.pid for p in workers[key] if p.pid])
                for key in ("writebus_1w", "writebus_2w")
            ),
        ]
        for _, write, _ in configs:  # connections opened, statements prepared, pools grown
            await drive(write, concurrency=max_c, seconds=0.0, warmup=warmup * 2)
        for c in concurrencies:
            done: dict[str, list[Slice]] = {key: [] for key, _, _ in configs}
            for r in range(slices):
                for k in range(len(configs)):
                    key, write, pids = configs[(r + k) % len(configs)]
                    done[key].append(
                        await drive(
                            write,
                            concurrency=c,
                            seconds=seconds / slices,
                            warmup=warmup,
                            server_pids=pids,
                        )
                    )
            for key, got in done.items():
                results[key][f"c{c}"] = Run.of(got)
    finally:
        for db in dbs.values():
            await db.close()
        await pool.close()
        for procs in workers.values():
            await stop_buses(procs)
    return results
