"""The drill's report as text and as JSON, and its exit code: pure, no I/O.

With both modes drilled, the report also says what synchronous replication cost: the
difference between the modes' p50/p99 write latency before the crash, per region.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from writebus.bus.drillreport import ModeReport
from writebus.client.lsn import format_lsn


def latency_cost(
    asynchronous: ModeReport, synchronous: ModeReport
) -> dict[str, dict[str, float | None]]:
    """What synchronous replication added to each region's p50/p99 write latency (ms)."""
    cost: dict[str, dict[str, float | None]] = {}
    for region, lat in synchronous.latency.items():
        base = asynchronous.latency.get(region)
        cost[region] = {
            "p50_ms": _minus(lat.p50_ms, base.p50_ms if base else None),
            "p99_ms": _minus(lat.p99_ms, base.p99_ms if base else None),
        }
    return cost


def drill_json(reports: Sequence[ModeReport]) -> dict[str, Any]:
    """The JSON document of a whole drill: each mode, and the sync latency cost when both ran."""
    by_mode = {r.mode: r for r in reports}
    doc: dict[str, Any] = {
        "drill": "failover",
        "ok": all(r.ok for r in reports),
        "modes": {r.mode: r.to_json() for r in reports},
    }
    if "async" in by_mode and "sync" in by_mode:
        doc["sync_latency_cost"] = latency_cost(by_mode["async"], by_mode["sync"])
    return doc


def exit_code(reports: Sequence[ModeReport]) -> int:
    """0 when every mode ran and held its invariants, else 1."""
    return 0 if reports and all(r.ok for r in reports) else 1


def render(reports: Sequence[ModeReport]) -> str:
    """The human-readable report."""
    lines: list[str] = []
    for r in reports:
        f = r.failover
        lines.append(
            f"== {r.mode} replication (standby {r.standby_state or '?'}): "
            f"{f.old_region} primary crashed at {f.crash_at:.2f} s, {f.new_region} promoted "
            f"from {format_lsn(f.standby_lsn)}"
        )
        for name, w in r.windows.items():
            seconds = "never resumed" if w.seconds is None else f"{w.seconds:.2f} s"
            o = r.outcomes[name]
            lat, aft = r.latency.get(name), r.latency_after.get(name)
            pct = (f"  p50/p99 before {_ms(lat.p50_ms)}/{_ms(lat.p99_ms)}, after "
                   f"{_ms(aft.p50_ms)}/{_ms(aft.p99_ms)}" if lat and aft else "")  # fmt: skip
            lines.append(
                f"  {name:<4} unavailable {seconds:<14} acked {o['acked']:>5}  "
                f"unknown {o['unknown']:>3}  failed {o['failed']:>3}{pct}"
            )
        lines.append(
            f"  acked writes that reached the standby: {r.reached_standby} "
            f"({r.reached_standby_present} present); beyond it: "
            f"{r.beyond_standby_present} present, {len(r.lost)} lost"
        )
        if r.replayed_lost:
            lines.append(f"  of the lost, {len(r.replayed_lost)} had been acknowledged as replayed "
                         "in their own region: a read-your-writes promise broken")  # fmt: skip
        lines.append(f"  duplicated {len(r.duplicated)}; unknown found applied "
                     f"{r.unknown_present}; errors {r.errors or '{}'}")  # fmt: skip
        lines.append("  OK" if r.ok else "  FAILED: " + "; ".join(r.violations))
    by_mode = {r.mode: r for r in reports}
    if "async" in by_mode and "sync" in by_mode:
        cost = latency_cost(by_mode["async"], by_mode["sync"])
        parts = [f"{reg} +{_ms(c['p50_ms'])} p50, +{_ms(c['p99_ms'])} p99"
                 for reg, c in cost.items()]  # fmt: skip
        lines.append("synchronous replication costs: " + "; ".join(parts))
    return "\n".join(lines)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
