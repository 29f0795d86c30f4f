"""pgbench on the same primary: the outside ceiling of single-row INSERTs (issue #12).

pgbench ships with Postgres and is written in C, so its rate is what the database takes when
the client costs next to nothing. The script is the same single-row INSERT the other paths
write, one transaction per row, prepared (``-M prepared``).
"""

from __future__ import annotations

import asyncio
import re
import resource
import tempfile
from pathlib import Path

from bench.harness import TABLE, machine_busy_seconds
from writebus.bus.embedded.errors import BinaryNotFound
from writebus.bus.embedded.pgbin import find_pg_bindir

SCRIPT = f"INSERT INTO {TABLE} (approach, body) VALUES ('pgbench', 'x');\n"
_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_LATENCY = re.compile(r"latency average = ([0-9.]+) ms")


class PgbenchError(RuntimeError):
    """pgbench could not run or said something unexpected."""


def pgbench_path() -> Path | None:
    """The pgbench of the Postgres the stack runs, if installed."""
    try:
        path = find_pg_bindir() / "pgbench"
    except BinaryNotFound:
        return None
    return path if path.exists() else None


async def run_pgbench(url: str, *, concurrency: int, seconds: float) -> dict[str, float]:
    """Run pgbench for ``seconds`` (whole seconds, at least one) at ``concurrency`` clients.

    Returns ``writes``, ``seconds`` (pgbench's own duration without connection time),
    ``latency_avg_ms``, ``client_cpu_s`` (pgbench's CPU) and the machine's busy and total
    CPU seconds over the run.
    """
    exe = pgbench_path()
    if exe is None:
        raise PgbenchError("pgbench is not installed next to the Postgres server binaries")
    duration = max(1, round(seconds))
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(SCRIPT)
        script = f.name
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0, total0 = machine_busy_seconds()
        proc = await asyncio.create_subprocess_exec(
            str(exe), "-n", "-M", "prepared", "-f", script,
            "-c", str(concurrency), "-j", str(min(concurrency, 2)), "-T", str(duration), url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        busy1, total1 = machine_busy_seconds()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        Path(script).unlink(missing_ok=True)
    text = out.decode(errors="replace")
    processed, tps = _PROCESSED.search(text), _TPS.search(text)
    if proc.returncode != 0 or processed is None or tps is None:
        tail = (err.decode(errors="replace") or text).strip().splitlines()[-3:]
        raise PgbenchError(f"pgbench exited with {proc.returncode}: {' | '.join(tail)}")
    writes = int(processed.group(1))
    latency = _LATENCY.search(text)
    return {
        "writes": writes,
        "seconds": writes / float(tps.group(1)) if float(tps.group(1)) else float(duration),
        "latency_avg_ms": float(latency.group(1)) if latency else float("nan"),
        "client_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "machine_busy_s": busy1 - busy0,
        "machine_total_s": total1 - total0,
    }
