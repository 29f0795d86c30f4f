"""``writebus bench`` keeps working: a tiny run writes a complete report and a plot.

No timing is asserted anywhere: the numbers depend on the machine. The run starts its own
two-region stack (not the session's) because it reconfigures the primary for a while.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.config import METRICS_OFF, METRICS_ON
from bench.report import evaluate_targets, target_row
from bench.run import run_bench
from bench.stats import percentile, summary

RYW = ("writebus", "writebus_sync", "floor", "poll_100ms", "poll_50ms", "direct_wan",
       "remote_apply")  # fmt: skip
READS = ("local", "token_replayed", "token_fresh", "strong", "bounded", "primary_wan")
THROUGHPUT = ("direct", "pgbench", "writebus_1w_grouped", "writebus_1w_asyncio",
              "writebus_1w_single", "writebus_1w_one_slot", "writebus_2w")  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _number(report: dict[str, object], dotted: str) -> float:
    node: object = report
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"missing {dotted}"
        node = node[key]
    assert isinstance(node, (int, float)) and not isinstance(node, bool), f"{dotted} = {node!r}"
    assert math.isfinite(node), f"{dotted} = {node!r}"
    return float(node)


def required_keys() -> list[str]:
    """Every key issues #3, #9, #10, #11 and #12 ask the JSON report to have."""
    keys = ["one_way_delay_ms"]
    for a in RYW:
        keys += [f"ryw_ms.{a}.p50", f"ryw_ms.{a}.p99", f"stale_reads.{a}"]
    for a in ("writebus", "interactive_wan"):
        keys += [f"batch10_ms.{a}.p50", f"batch10_ms.{a}.p99"]
    for a in READS:
        keys += [f"reads_ms.{a}.p50", f"reads_ms.{a}.p99"]
    for a in THROUGHPUT:
        keys += [f"throughput_wps.{a}.{c}" for c in ("c1", "c16", "c64")]
        keys += [f"throughput_detail.{a}.c64.{k}" for k in
                 ("client_cpu_ms_per_write", "machine_cpu_ms_per_write")]  # fmt: skip
    keys += [f"throughput_wps.{a}.c16" for a in (*METRICS_ON, *METRICS_OFF)]
    keys += ["idempotency_bytes_per_write"]
    for a in ("writebus_1w_grouped", "writebus_1w_one_slot"):
        keys += [f"throughput_detail.{a}.{c}.mean_group" for c in ("c16", "c64")]
        keys += [f"throughput_detail.{a}.c64.server_cpu_ms_per_write"]
    keys += ["throughput_detail.writebus_1w_request_log.c64.server_cpu_ms_per_write"]
    keys += [f"throughput_wps.writebus_1w_{a}_30ms.c16" for a in ("grouped", "single")]
    keys += [f"tracker.{k}" for k in ("waiters", "wake_p50_ms", "wake_p99_ms", "cpu_s")]
    for a in ("writebus", "direct"):
        keys += [f"primary_local_ms.{a}.p50", f"primary_local_ms.{a}.p99"]
    return keys


@pytest.mark.timeout(180)
def test_tiny_bench_writes_complete_report_and_plot(tmp_path: Path) -> None:
    """A run with 3 samples per approach exits 0 (no stale writebus read), writes a JSON report
    holding every required key as a number, every target evaluated, and a PNG plot."""
    json_path = tmp_path / "bench.json"
    code = run_bench(json_path=str(json_path), samples=3, delay_ms=5.0)
    assert code == 0
    report = json.loads(json_path.read_text())
    for key in required_keys():
        _number(report, key)
    assert report["stale_reads"]["writebus"] == 0
    assert all(isinstance(t["met"], bool) for t in report["targets"])
    png = json_path.with_suffix(".png")  # default: next to the JSON
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_percentile_interpolates_between_ranks() -> None:
    """Percentiles interpolate linearly; an empty sample gives nan rather than raising."""
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert math.isnan(percentile([], 50))
    s = summary([1.0, 2.0, 3.0])
    assert (s["p50"], s["n"], s["min"], s["max"]) == (2.0, 3, 1.0, 3.0)


def test_targets_compare_ratios_from_one_run() -> None:
    """Targets are judged from the report alone; a missing measurement is never 'met'."""
    ms = {"p50": 10.0, "p99": 20.0}

    def run(wps: float, server: float, machine: float, p50: float = 1.0) -> dict[str, float]:
        return {"wps": wps, "server_cpu_ms_per_write": server,
                "machine_cpu_ms_per_write": machine, "p50_ms": p50}  # fmt: skip

    report = {
        "ryw_ms": {"writebus": {"p50": 53.0, "p99": 60.0}, "floor": {"p50": 51.0, "p99": 55.0},
                   "writebus_sync": {"p50": 53.3, "p99": 61.0},
                   "poll_100ms": {"p50": 100.0, "p99": 150.0}},
        "stale_reads": {"writebus": 0},
        "batch10_ms": {"writebus": ms, "interactive_wan": {"p50": 100.0, "p99": 100.0}},
        "reads_ms": {"local": {"p50": 0.5}, "token_replayed": {"p50": 0.55},
                     "strong": {"p50": 60.0}, "primary_wan": {"p50": 51.0}},
        "throughput_wps": {"direct": {"c64": 1000.0}, "writebus_1w_grouped": {"c64": 1200.0,
                           "c16": 900.0},
                           **{k: {"c16": 1000.0} for k in METRICS_ON[1:] + METRICS_OFF[:-1]},
                           METRICS_OFF[-1]: {}},
        "throughput_detail": {
            "direct": {"c64": run(1000.0, 0.0, 1.0)},
            "writebus_1w_grouped": {"c64": run(1200.0, 0.3, 1.2), "c1": run(200, 1, 1, 2.0)},
            "writebus_1w_single": {"c1": run(200, 1, 1, 2.05)},
        },
        "tracker": {"waiters": 10, "wake_p99_ms": 1.0, "batched": {"per_broadcast": 2,
                                                                   "wake_p99_ms": 9.0},
                    "bare_asyncio": {"wake_p99_ms": 1.1},
                    "release": {"10": {"comparisons_per_woken": 6.0, "log2_n": 3.3},
                                "100": {"comparisons_per_woken": 30.0, "log2_n": 6.6}}},
        "primary_local_ms": {"writebus": ms, "direct": ms},
    }  # fmt: skip
    met = {t.name: t.met for t in evaluate_targets(report)}

    def judged(prefix: str) -> list[bool]:
        return [ok for name, ok in met.items() if name.startswith(prefix)]

    assert judged("writebus p50 - floor p50") == [True]
    assert judged("writebus p50 / poll_100ms p50") == [True]
    assert judged("sync API RYW p50 - async") == [True]  # 0.3 ms
    assert judged("read after a replayed token") == [True]  # 0.05 ms
    assert judged("strong read p50 - primary_wan") == [False]  # 9 ms over
    assert judged("1 worker (grouped) c64 / direct") == [True]
    assert judged("bus worker CPU per write") == [False, False]  # 0.3 ms; no single: NaN
    assert judged("whole-machine CPU per write") == [True]  # 1.2x
    assert judged("c1 p50, grouped") == [True]  # 0.98x
    assert judged("metrics on vs off") == [False]  # one process not measured: not met
    report["throughput_wps"][METRICS_OFF[-1]] = {"c16": 960.0}  # type: ignore[index]
    met = {t.name: t.met for t in evaluate_targets(report)}
    assert judged("metrics on vs off") == [True]  # mean 975 vs 990: 1.5 %
    report["throughput_wps"][METRICS_OFF[-1]] = {"c16": 1400.0}  # type: ignore[index]
    met = {t.name: t.met for t in evaluate_targets(report)}
    assert judged("metrics on vs off") == [False]  # 975 vs 1100: 11 %
    assert judged("tracker wake p99") == [True, False]  # 0.91x bare; 2 per broadcast: 9 ms
    assert judged("heap comparisons per woken waiter") == [False]  # grew 5x, log n 2x
    assert judged("30 ms writes at c16") == [False]  # not measured
    report["throughput_wps"]["writebus_1w_grouped_30ms"] = {"c16": 460.0}  # type: ignore[index]
    report["throughput_wps"]["writebus_1w_single_30ms"] = {"c16": 500.0}  # type: ignore[index]
    met = {t.name: t.met for t in evaluate_targets(report)}
    assert judged("30 ms writes at c16") == [True]  # 0.92x
    report["throughput_wps"]["writebus_1w_grouped_30ms"] = {"c16": 60.0}  # type: ignore[index]
    met = {t.name: t.met for t in evaluate_targets(report)}
    assert judged("30 ms writes at c16") == [False]  # capped by the slots: 0.12x


def test_a_target_row_never_shows_a_miss_as_the_limit() -> None:
    """Two digits, unless the value rounds to its limit: 0.204 ms against 0.2 reads 0.204."""

    def row(value: float) -> str:
        return target_row({"name": "cpu | x", "value": value, "limit": 0.2, "unit": "ms",
                           "met": value <= 0.2})  # fmt: skip

    assert row(0.204) == "| cpu \\| x | 0.204 ms | 0.20 | **missed** |"
    assert row(0.2) == "| cpu \\| x | 0.20 ms | 0.20 | met |"
    assert row(0.18) == "| cpu \\| x | 0.18 ms | 0.20 | met |"


def test_slice_order_rotates_and_keeps_pairs_side_by_side_in_alternating_order() -> None:
    from bench.throughput import PAIRS, slice_order

    keys = ["direct", "a", "b", "pgbench"]
    orders = [slice_order(keys, r, {"b": "a"}) for r in range(4)]
    assert all(sorted(o) == sorted(keys) for o in orders)
    for r, order in enumerate(orders):
        i, j = order.index("a"), order.index("b")
        assert abs(i - j) == 1  # always beside each other
        assert (j > i) == (r % 2 == 0)  # AB, BA, AB, BA
    assert len({o[0] for o in orders}) == 3  # no one always first
    # Without its partner (the pair is measured at c16 only) a config runs as any other.
    assert sorted(slice_order(["direct", "b"], 1, {"b": "a"})) == ["b", "direct"]
    assert PAIRS == {**dict(zip(METRICS_OFF, METRICS_ON, strict=True)),
                     "writebus_1w_request_log": "writebus_1w_grouped",
                     "writebus_1w_single_30ms": "writebus_1w_grouped_30ms"}  # fmt: skip
    # Two followers of one config both run beside it, in the same alternating order.
    two = [slice_order(["a", "b", "c", "d"], r, {"b": "a", "c": "a"}) for r in range(2)]
    assert two[0][two[0].index("a") : two[0].index("a") + 3] == ["a", "b", "c"]
    assert two[1][two[1].index("a") - 2 : two[1].index("a") + 1] == ["b", "c", "a"]
