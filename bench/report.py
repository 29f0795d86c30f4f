"""The report of a run: the JSON document, the targets, and the table. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.config import METRICS_OFF, METRICS_ON
from bench.stats import ratio

#: Read-your-write approaches, in table order.
RYW_APPROACHES = (
    "writebus", "writebus_sync", "floor", "poll_100ms", "poll_50ms", "direct_wan", "remote_apply"
)
#: Kinds of reads from ``lax`` (bench/reads.py), in table order.
READ_KINDS = ("local", "token_replayed", "token_fresh", "strong", "bounded", "primary_wan")
#: The grouped worker, and what it is compared with.
GROUPED = "writebus_1w_grouped"
#: How the baselines read in the table.
BASELINE_NAMES = {
    "wan_rtt": "`SELECT 1` over the WAN",
    "nats_echo": "NATS request/reply lax->syd with an immediate responder",
}
#: Extra rows: what a synchronous standby does to primary-region writes.
RYW_EXTRA = ("remote_apply_syd_local",)


@dataclass(frozen=True)
class Target:
    """One target of the issue, evaluated on this run."""

    name: str
    value: float
    limit: float
    unit: str
    met: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "value": _num(self.value),
            "limit": _num(self.limit),
            "unit": self.unit,
            "met": self.met,
        }


def _num(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else round(x, 3)


def _at_most(name: str, value: float, limit: float, unit: str) -> Target:
    return Target(name, value, limit, unit, not math.isnan(value) and value <= limit)


def _at_least(name: str, value: float, limit: float, unit: str) -> Target:
    return Target(name, value, limit, unit, not math.isnan(value) and value >= limit)


def _mean_at(tp: Mapping[str, Any], keys: Sequence[str], at: str) -> float:
    """Mean writes/s of the configurations ``keys`` at ``at`` (NaN if one is missing)."""
    values = [tp.get(key, {}).get(at, math.nan) for key in keys]
    return sum(values) / len(values)


def evaluate_targets(report: Mapping[str, Any]) -> list[Target]:
    """The issue's targets, as ratios and differences from this run."""
    ryw = report["ryw_ms"]
    wb, floor, poll = ryw["writebus"], ryw["floor"], ryw["poll_100ms"]
    batch = report["batch10_ms"]
    tp = report["throughput_wps"]
    tracker = report["tracker"]
    local = report["primary_local_ms"]
    release = tracker["release"]
    sizes = sorted(release, key=int)
    lo, hi = release[sizes[0]], release[sizes[-1]]
    growth = ratio(hi["comparisons_per_woken"], lo["comparisons_per_woken"])
    reads = report["reads_ms"]
    c64 = report["throughput_detail"][GROUPED].get("c64", {})
    direct64 = report["throughput_detail"]["direct"].get("c64", {})
    bare = tracker["bare_asyncio"]
    return [
        _at_most("writebus p50 - floor p50", wb["p50"] - floor["p50"], 3.0, "ms"),
        _at_most("writebus p99 - floor p99", wb["p99"] - floor["p99"], 10.0, "ms"),
        _at_most("writebus stale reads", float(report["stale_reads"]["writebus"]), 0.0, "reads"),
        _at_most("writebus p50 / poll_100ms p50", ratio(wb["p50"], poll["p50"]), 0.6, "x"),
        _at_most(
            "sync API RYW p50 - async RYW p50",
            ryw["writebus_sync"]["p50"] - wb["p50"],
            0.5,
            "ms",
        ),
        _at_most(
            "batch10 writebus p50 / interactive_wan p50",
            ratio(batch["writebus"]["p50"], batch["interactive_wan"]["p50"]),
            0.2,
            "x",
        ),
        _at_most(
            "read after a replayed token p50 - plain local read p50",
            reads["token_replayed"]["p50"] - reads["local"]["p50"],
            0.1,
            "ms",
        ),
        _at_most(
            "strong read p50 - primary_wan read p50",
            reads["strong"]["p50"] - reads["primary_wan"]["p50"],
            3.0,
            "ms",
        ),
        _at_least(
            "1 worker (grouped) c64 / direct psycopg c64 writes/s",
            ratio(tp[GROUPED].get("c64", math.nan), tp["direct"].get("c64", math.nan)),
            1.0,
            "x",
        ),
        _at_least(
            "30 ms writes at c16, 1 worker grouped / one transaction per write, writes/s",
            ratio(
                tp.get("writebus_1w_grouped_30ms", {}).get("c16", math.nan),
                tp.get("writebus_1w_single_30ms", {}).get("c16", math.nan),
            ),
            0.9,
            "x",
        ),
        _at_most(
            "bus worker CPU per write, 1 worker c64",
            c64.get("server_cpu_ms_per_write", math.nan),
            0.2,
            "ms",
        ),
        _at_most(
            "bus worker CPU per write at c64, grouped / one transaction per write (the "
            "issue's 0.2 of 0.58 ms, as a ratio from this run)",
            ratio(
                c64.get("server_cpu_ms_per_write", math.nan),
                report["throughput_detail"].get("writebus_1w_single", {}).get("c64", {}).get(
                    "server_cpu_ms_per_write", math.nan
                ),
            ),
            0.2 / 0.58,
            "x",
        ),
        _at_most(
            "whole-machine CPU per write, bus / direct, c64",
            ratio(
                c64.get("machine_cpu_ms_per_write", math.nan),
                direct64.get("machine_cpu_ms_per_write", math.nan),
            ),
            1.5,
            "x",
        ),
        _at_most(
            "c1 p50, grouped / one transaction per write",
            ratio(
                report["throughput_detail"][GROUPED].get("c1", {}).get("p50_ms", math.nan),
                report["throughput_detail"]["writebus_1w_single"].get("c1", {}).get(
                    "p50_ms", math.nan
                ),
            ),
            1.05,
            "x (5 % for noise)",
        ),
        _at_most(
            f"metrics on vs off, 1 worker c16 writes/s (each the mean of {len(METRICS_ON)} "
            "processes): |1 - on/off|",
            abs(1 - ratio(_mean_at(tp, METRICS_ON, "c16"), _mean_at(tp, METRICS_OFF, "c16"))),
            0.05,
            "",
        ),
        _at_most(
            f"tracker wake p99 / bare asyncio p99, {tracker['waiters']} waiters, one broadcast",
            ratio(tracker["wake_p99_ms"], bare["wake_p99_ms"]),
            1.0,
            "x",
        ),
        _at_most(
            f"tracker wake p99, {tracker['waiters']} waiters released "
            f"{tracker['batched']['per_broadcast']} per broadcast",
            tracker["batched"]["wake_p99_ms"],
            5.0,
            "ms",
        ),
        _at_most(
            f"heap comparisons per woken waiter, {int(sizes[0]):,} -> {int(sizes[-1]):,} waiters "
            f"(log n: {ratio(hi['log2_n'], lo['log2_n']):.2f}x, a scan: "
            f"{int(sizes[-1]) // int(sizes[0])}x)",
            growth,
            # Logarithmic growth, with room for noise in where equal keys land.
            1.2 * ratio(hi["log2_n"], lo["log2_n"]),
            "x",
        ),
        _at_most(
            "primary-region writebus p50 / direct p50",
            ratio(local["writebus"]["p50"], local["direct"]["p50"]),
            1.15,
            "x",
        ),
    ]


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def table(report: Mapping[str, Any]) -> str:
    """The results as Markdown tables (readable in a terminal too)."""
    d = report["one_way_delay_ms"]
    lines: list[str] = []
    add = lines.append
    m = report["machine"]
    add(f"One-way WAN delay {_f(d)} ms (RTT {_f(2 * d)} ms); {m['cpus']} CPUs "
        f"(`{m.get('platform', '?')}`), load average "
        f"{_f(m['loadavg_start'], 1)} at the start, {_f(m['loadavg_end'], 1)} at the end; "
        f"{'quick' if report['quick'] else 'full'} run, {_f(report['duration_s'], 0)} s.")
    add("")
    add("**Write, then read it back from the `lax` replica** (ms)")
    add("")
    add("| approach | p50 | p99 | stale reads | n |")
    add("|---|---:|---:|---:|---:|")
    notes = {
        "floor": " (WAN RTT + commit, no read)",
        "remote_apply_syd_local": " (a `syd` app's local write+read)",
    }
    for name in RYW_APPROACHES + RYW_EXTRA:
        s = report["ryw_ms"].get(name)
        if s is None:
            continue
        stale = report["stale_reads"].get(name)
        stale_text = "-" if name == "floor" else str(stale)
        add(f"| {name}{notes.get(name, '')} | {_f(s['p50'])} | {_f(s['p99'])} | "
            f"{stale_text} | {s['n']} |")
    parts = report.get("ryw_parts_p50_ms", {}).get("writebus")
    if parts:
        add("")
        add("writebus p50 parts: " + ", ".join(f"{k} {_f(v, 2)} ms" for k, v in parts.items())
            + " (forward: request and reply in flight; commit: time on the worker)")
    base = report.get("baselines_ms", {})
    if base:
        add("")
        add("Baselines measured in the same rounds (p50 / p99 ms): "
            + "; ".join(f"{BASELINE_NAMES.get(k, k)} {_f(v['p50'], 2)} / {_f(v['p99'], 2)}"
                        for k, v in base.items()))
    add("")
    add("**10-statement atomic change from `lax`** (ms)")
    add("")
    add("| approach | p50 | p99 | n |")
    add("|---|---:|---:|---:|")
    for name, s in report["batch10_ms"].items():
        add(f"| {name} | {_f(s['p50'])} | {_f(s['p99'])} | {s['n']} |")
    add("")
    add("**Throughput, single-row inserts in `syd`, no WAN** (writes/s; `_30ms` rows: each "
        "insert spends 30 ms in its transaction)")
    add("")
    tp = report["throughput_wps"]
    cs = list(tp["direct"].keys())
    last = cs[-1]
    add("| path | " + " | ".join(cs) + f" | CPU ms per write at {last}: load generator / "
        f"bus workers / whole machine | mean group at {', '.join(cs)} |")
    add("|---|" + "---:|" * len(cs) + "---:|---:|")
    for name, row in tp.items():
        details = report["throughput_detail"][name]
        detail = details.get(last) or next(iter(details.values()))
        groups = ", ".join(_f(details[c]["mean_group"], 1) if c in details else "-" for c in cs)
        add(f"| {name} | " + " | ".join(_f(row.get(c), 0) for c in cs)
            + f" | {_f(detail['client_cpu_ms_per_write'], 2)} / "
              f"{_f(detail['server_cpu_ms_per_write'], 2)} / "
              f"{_f(detail['machine_cpu_ms_per_write'], 2)} | {groups} |")
    add("")
    add("p50 / p99 ms per write at " + ", ".join(cs) + ": " + "; ".join(
        f"{name} " + ", ".join(
            f"{_f(d['p50_ms'], 2)}/{_f(d['p99_ms'], 2)}" for d in details.values()
        )
        for name, details in report["throughput_detail"].items() if name != "pgbench"
    ))
    if "idempotency_bytes_per_write" in report:
        add("")
        add(f"Exactly-once record: {_f(report['idempotency_bytes_per_write'], 0)} bytes per "
            "write (table and indexes, all partitions).")
    add("")
    add("**Reads from `lax`** (ms)")
    add("")
    add("| read | p50 | p99 | n |")
    add("|---|---:|---:|---:|")
    for name in READ_KINDS:
        r = report["reads_ms"].get(name)
        if r is not None:
            add(f"| {name} | {_f(r['p50'], 2)} | {_f(r['p99'], 2)} | {r['n']} |")
    add("")
    t = report["tracker"]
    add("**Tracker scale** (one process; wake-up = resumed minus broadcast published)")
    add("")
    add("| waiters | released per broadcast | wake p50 ms | wake p99 ms | CPU s | in tracker ms |")
    add("|---:|---:|---:|---:|---:|---:|")
    for run in (t["all_at_once"], t["batched"]):
        add(f"| {run['waiters']} | {run['per_broadcast']} | {_f(run['wake_p50_ms'], 2)} | "
            f"{_f(run['wake_p99_ms'], 2)} | {_f(run['cpu_s'], 3)} | {_f(run['advance_ms'], 2)} |")
    b = t["bare_asyncio"]
    add(f"| {t['waiters']} | bare asyncio futures, all at once | {_f(b['wake_p50_ms'], 2)} | "
        f"{_f(b['wake_p99_ms'], 2)} | - | - |")
    add("")
    p99s = t.get("wake_all_p99s_ms")
    if p99s:
        add("All at once, tracker and bare futures alternating, each after a full garbage "
            "collection (the medians above), p99 ms: tracker "
            + ", ".join(_f(x, 1) for x in p99s["tracker"]) + "; bare "
            + ", ".join(_f(x, 1) for x in p99s["bare"]) + ".")
        add("")
    batched_p99s = t.get("batched_p99s_ms")
    if batched_p99s:
        add(f"{t['batched']['per_broadcast']} per broadcast: the run with the median p99 of "
            f"{len(batched_p99s)}, p99 ms " + ", ".join(_f(x, 2) for x in batched_p99s) + ".")
        add("")
    add(f"Releasing {t['release_count']} waiters from the heap:")
    add("")
    add("| waiters | µs per release | comparisons per woken | log2 n | a scan, µs |")
    add("|---:|---:|---:|---:|---:|")
    for n, r in t["release"].items():
        add(f"| {int(n):,} | {_f(r['us'], 1)} | {_f(r['comparisons_per_woken'], 1)} | "
            f"{_f(r['log2_n'], 1)} | {_f(r['scan_us'], 0)} |")
    add("")
    add("**Primary-region writes** (`syd` app, local primary; ms)")
    add("")
    add("| path | p50 | p99 | n |")
    add("|---|---:|---:|---:|")
    for name, s in report["primary_local_ms"].items():
        add(f"| {name} | {_f(s['p50'], 2)} | {_f(s['p99'], 2)} | {s['n']} |")
    add("")
    add("**Targets**")
    add("")
    add("| target | this run | limit | |")
    add("|---|---:|---:|---|")
    for tg in report["targets"]:
        add(target_row(tg))
    return "\n".join(lines) + "\n"


def target_row(tg: Mapping[str, Any]) -> str:
    """One target's row of the table. A value that rounds to its limit gets a third digit,
    so a miss never reads as equal to the limit."""
    name = tg["name"].replace("|", "\\|")  # a pipe inside a cell ends it
    value, limit = tg["value"], tg["limit"]
    digits = 3 if _f(value, 2) == _f(limit, 2) and _f(value, 3) != _f(limit, 3) else 2
    return (f"| {name} | {_f(value, digits)} {tg['unit']} | {_f(limit, 2)} | "
            f"{'met' if tg['met'] else '**missed**'} |")
