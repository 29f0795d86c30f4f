"""The exactly-once invariant, checked against the primary, and the scenario report.

After a load, the primary must hold every write whose caller saw it acknowledged exactly once,
no write whose caller was told "not applied", and no write twice. A write whose outcome was
unknown is resolved first, as an application would: re-sent with its request id, it comes back
as a duplicate (it had been applied) or is applied now -- either way it is then present once.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.faults.load import LoadResult

#: Where every scenario's figures are collected (one JSON object keyed by scenario name).
REPORT_ENV = "WRITEBUS_FAULT_REPORT"
DEFAULT_REPORT = "/tmp/writebus-fault-report.json"


@dataclass(kw_only=True)
class Check:
    """The figures of one scenario and the invariant's violations (empty when it holds)."""

    scenario: str
    attempted: int
    acked: int
    unknown: int
    not_applied: int
    other: int
    found: int
    duplicated: int
    #: Unknown outcomes that turned out applied (the re-send was a duplicate) / not applied.
    unknown_were_applied: int = 0
    unknown_were_not: int = 0
    replication_timeouts: int = 0
    retried_duplicates: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: A few failed writes as ``region key error: message``, to see what went wrong where.
    failure_samples: list[str] = field(default_factory=list)
    missing_acked: list[str] = field(default_factory=list)
    present_failed: list[str] = field(default_factory=list)
    duplicated_keys: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the invariant holds."""
        return not (self.missing_acked or self.present_failed or self.duplicated_keys
                    or self.stray)

    @property
    def all_acked(self) -> bool:
        """Every write acknowledged: no unknown, not-applied or other outcome."""
        return self.acked == self.attempted

    def line(self) -> str:
        """The one-line figure quoted for the scenario."""
        return (
            f"scenario={self.scenario} attempted={self.attempted} acked={self.acked} "
            f"unknown={self.unknown} (applied {self.unknown_were_applied}, "
            f"not {self.unknown_were_not}) not_applied={self.not_applied} other={self.other} "
            f"found={self.found} duplicated={self.duplicated} "
            f"replication_timeouts={self.replication_timeouts} "
            f"retried_duplicates={self.retried_duplicates}"
        )

    def explain(self) -> str:
        """A failure message naming a few offending keys of each kind, and the errors seen."""
        parts = [self.line(), f"errors={self.errors}", f"samples={self.failure_samples[:5]}"]
        for name in ("missing_acked", "present_failed", "duplicated_keys", "stray"):
            keys: list[str] = getattr(self, name)
            if keys:
                parts.append(f"{name}({len(keys)})={sorted(keys)[:10]}")
        return "; ".join(parts)


def primary_counts(primary_url: str, table: str) -> dict[str, int]:
    """Rows per key in ``table`` on the primary (the ground truth)."""
    with psycopg.connect(primary_url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(f"SELECT key, count(*) FROM {table} GROUP BY key").fetchall()
    return {str(key): int(n) for key, n in rows}


def check(
    scenario: str,
    result: LoadResult,
    counts: dict[str, int],
    *,
    counts_before_resolving: dict[str, int] | None = None,
    resolved: dict[str, bool] | None = None,
) -> Check:
    """Compare what the callers saw (``result``) with what the primary holds (``counts``).

    ``resolved`` maps each unknown write's key to whether its re-send found it already applied;
    ``counts_before_resolving`` is the primary before those re-sends (not-applied writes must be
    absent there, and found counts what the load itself left).
    """
    before = counts if counts_before_resolving is None else counts_before_resolving
    resolved = resolved or {}
    acked = result.keys("acked")
    not_applied = result.keys("not_applied") | result.keys("other")
    unknown = result.keys("unknown")
    attempted = {o.key for o in result.outcomes}
    return Check(
        scenario=scenario,
        attempted=result.attempted,
        acked=len(acked),
        unknown=len(unknown),
        not_applied=result.count("not_applied"),
        other=result.count("other"),
        unknown_were_applied=sum(resolved.values()),
        unknown_were_not=sum(not v for v in resolved.values()),
        found=sum(1 for key in attempted if before.get(key, 0) > 0),
        duplicated=sum(1 for n in counts.values() if n > 1),
        replication_timeouts=sum(o.replication_timeout for o in result.outcomes),
        retried_duplicates=sum(o.duplicate for o in result.outcomes),
        errors=result.errors(),
        failure_samples=[
            f"{o.region} {o.key} {o.error}: {o.message}"
            for o in result.outcomes
            if o.status != "acked"
        ][:10],
        missing_acked=[k for k in acked | unknown if counts.get(k, 0) != 1],
        present_failed=[k for k in not_applied if before.get(k, 0) > 0],
        duplicated_keys=[k for k, n in counts.items() if n > 1],
        stray=[k for k in counts if k not in attempted],
    )


def record(report: Check, path: str | os.PathLike[str] | None = None) -> Path:
    """Print the scenario's line and merge its figures into the JSON report file."""
    print(report.line())
    target = Path(path or os.environ.get(REPORT_ENV) or DEFAULT_REPORT)
    try:
        data: dict[str, Any] = json.loads(target.read_text())
    except (OSError, ValueError):
        data = {}
    entry = asdict(report)
    for name in ("missing_acked", "present_failed", "duplicated_keys", "stray"):
        entry[name] = sorted(entry[name])[:20]
    entry["ok"] = report.ok
    data[report.scenario] = entry
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(target)
    return target
