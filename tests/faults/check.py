"""The exactly-once invariant, checked against the primary, and the scenario report.

After a load, the primary must hold every write whose caller saw it acknowledged exactly once,
no write whose caller saw a non-retryable error, and no write twice. Writes that failed with a
retryable error may be present once or not at all.
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
    failed_retryable: int
    failed_other: int
    found: int
    duplicated: int
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

    def line(self) -> str:
        """The one-line figure quoted for the scenario."""
        return (
            f"scenario={self.scenario} attempted={self.attempted} acked={self.acked} "
            f"failed_retryable={self.failed_retryable} failed_other={self.failed_other} "
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


def check(scenario: str, result: LoadResult, counts: dict[str, int]) -> Check:
    """Compare what the callers saw (``result``) with what the primary holds (``counts``)."""
    acked = result.keys("acked")
    failed_other = result.keys("failed_other")
    attempted = {o.key for o in result.outcomes}
    return Check(
        scenario=scenario,
        attempted=result.attempted,
        acked=len(acked),
        failed_retryable=result.count("failed_retryable"),
        failed_other=len(failed_other),
        found=sum(1 for key in attempted if counts.get(key, 0) > 0),
        duplicated=sum(1 for n in counts.values() if n > 1),
        replication_timeouts=sum(o.replication_timeout for o in result.outcomes),
        retried_duplicates=sum(o.duplicate for o in result.outcomes),
        errors=result.errors(),
        failure_samples=[
            f"{o.region} {o.key} {o.error}: {o.message}"
            for o in result.outcomes
            if o.status != "acked"
        ][:10],
        missing_acked=[k for k in acked if counts.get(k, 0) != 1],
        present_failed=[k for k in failed_other if counts.get(k, 0) > 0],
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
