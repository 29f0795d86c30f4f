"""What a failover drill measured, and whether its invariants held: pure, no I/O.

The drill (:mod:`writebus.bus.drill`) records one :class:`WriteRecord` per write it made, the
moment it crashed the old primary, the standby's WAL position just before promotion, and how
many rows each write's key has on the new primary. :func:`summarize` turns that into a
:class:`ModeReport`:

* **outcomes** -- acked (the call returned, or :class:`ReplicationTimeoutError`: committed),
  unknown (:class:`OutcomeUnknownError`, or an error that says nothing about the write) and
  failed (an error that says the write was not applied);
* **the unavailability window** -- from the last write acknowledged before the crash to the
  first acknowledged by the new primary, overall and per region of the app;
* **durability** -- an acked write whose LSN is at or below the standby's position reached the
  standby before promotion and *must* be on the new primary; one above it that is absent was
  **lost** (asynchronous replication allows that; synchronous must not). A write's LSN is the
  primary's flush position read *after* its commit, an upper bound of its commit record, so
  "at or below the position" never claims a write reached the standby when it had not. Lost
  writes whose call had also said "replayed in your region" are counted apart
  (``replayed_lost``): their app was promised it could read them locally;
* **invariants** -- nothing that must be present is missing, no key applied twice, no write
  reported "not applied" present, no loss in sync mode, and writes resumed in every region.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from writebus.client.lsn import format_lsn

Status = Literal["acked", "unknown", "failed"]
Mode = Literal["async", "sync"]
MODES: tuple[Mode, ...] = ("async", "sync")
#: How many offending keys a report lists per kind (the counts are always whole).
SAMPLE_KEYS = 20


@dataclass(frozen=True, kw_only=True)
class WriteRecord:
    """What the app saw of one write. Times are seconds since the load started.

    ``served_by`` is the region whose primary committed it (``WriteResult.region``; None when
    unknown, as for a :class:`ReplicationTimeoutError`); ``lsn`` the flush LSN it returned;
    ``replicated`` whether the call waited until its region's replica had replayed that LSN.
    """

    key: str
    region: str
    request_id: str
    status: Status
    started: float
    ended: float
    served_by: str | None = None
    lsn: int | None = None
    duplicate: bool = False
    replicated: bool = False
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        """How long the call took."""
        return (self.ended - self.started) * 1000


@dataclass(frozen=True, kw_only=True)
class Failover:
    """The facts of one failover: who was primary, who is now, when, and how far the standby
    had got. ``crash_at`` and ``promoted_at`` are seconds since the load started;
    ``standby_lsn`` the standby's WAL position (received and replayed) read after the crash,
    just before promotion."""

    old_region: str
    new_region: str
    crash_at: float
    standby_lsn: int
    promoted_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class Window:
    """Writes unavailable in one region (or overall): the ``last_ack`` before the crash and the
    ``first_ack`` answered by the new primary, in seconds since the load started (None: never).

    Acks in between are writes the old primary committed before the crash whose callers were
    still waiting (a replica-region app waits for its replica to replay the commit): they end
    when the new primary's progress passes their LSN, and say nothing about availability.
    """

    last_ack: float | None
    first_ack: float | None
    crash_at: float

    @property
    def seconds(self) -> float | None:
        """The unavailability window, or None when writes never resumed."""
        if self.first_ack is None:
            return None
        return self.first_ack - (self.last_ack if self.last_ack is not None else self.crash_at)

    @property
    def after_crash(self) -> float | None:
        """From the crash to the first write acknowledged by the new primary."""
        return None if self.first_ack is None else self.first_ack - self.crash_at

    def to_json(self) -> dict[str, float | None]:
        """Rounded figures for the JSON report."""
        return {
            "seconds": _round(self.seconds),
            "after_crash_s": _round(self.after_crash),
            "last_ack_s": _round(self.last_ack),
            "first_ack_s": _round(self.first_ack),
        }


@dataclass(frozen=True, kw_only=True)
class Latency:
    """p50/p99 (nearest rank) of a set of acknowledged writes, in milliseconds."""

    count: int
    p50_ms: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, ms: Sequence[float]) -> Latency:
        """The figures of these latencies."""
        return cls(count=len(ms), p50_ms=percentile(ms, 0.5), p99_ms=percentile(ms, 0.99))

    def to_json(self) -> dict[str, float | None]:
        """Rounded figures for the JSON report."""
        return {"count": self.count, "p50_ms": _round(self.p50_ms, 2),
                "p99_ms": _round(self.p99_ms, 2)}  # fmt: skip


@dataclass(kw_only=True)
class ModeReport:
    """Everything one drill run (one replication mode) measured; see the module docstring."""

    mode: Mode
    standby_state: str | None
    failover: Failover
    attempted: int
    outcomes: dict[str, dict[str, int]]
    errors: dict[str, int]
    windows: dict[str, Window]
    latency: dict[str, Latency]
    latency_after: dict[str, Latency]
    reached_standby: int
    reached_standby_present: int
    beyond_standby_present: int
    lost: list[str]
    replayed_lost: list[str]
    missing: list[str]
    duplicated: list[str]
    failed_present: list[str]
    unknown_present: int
    resumed: dict[str, bool]
    #: Every write's record (not in the JSON report: its figures are).
    records: list[WriteRecord] = field(default_factory=list, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        """Each broken invariant, in words (empty when the drill passed)."""
        found = []
        if self.missing:
            found.append(f"{len(self.missing)} acked writes that must survive are missing")
        if self.duplicated:
            found.append(f"{len(self.duplicated)} writes applied more than once")
        if self.failed_present:
            found.append(f"{len(self.failed_present)} writes reported not applied are present")
        if self.mode == "sync" and self.lost:
            found.append(f"{len(self.lost)} acked writes lost despite synchronous replication")
        stuck = [region for region, ok in self.resumed.items() if not ok]
        if stuck:
            found.append(f"writes never resumed in {', '.join(stuck)}")
        return found

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON object (offending keys sampled, counts whole)."""
        return {
            "mode": self.mode,
            "ok": self.ok,
            "violations": self.violations,
            "standby_state": self.standby_state,
            "old_primary": self.failover.old_region,
            "new_primary": self.failover.new_region,
            "crash_at_s": _round(self.failover.crash_at),
            "promoted_at_s": _round(self.failover.promoted_at),
            "standby_lsn": format_lsn(self.failover.standby_lsn),
            "attempted": self.attempted,
            "outcomes": self.outcomes,
            "errors": self.errors,
            "unavailable": {name: w.to_json() for name, w in self.windows.items()},
            "latency_before_crash": {reg: lat.to_json() for reg, lat in self.latency.items()},
            "latency_after_resume": {
                reg: lat.to_json() for reg, lat in self.latency_after.items()
            },
            "reached_standby": self.reached_standby,
            "reached_standby_present": self.reached_standby_present,
            "beyond_standby_present": self.beyond_standby_present,
            "lost": len(self.lost),
            "replayed_lost": len(self.replayed_lost),
            "missing": len(self.missing),
            "duplicated": len(self.duplicated),
            "failed_present": len(self.failed_present),
            "unknown_present": self.unknown_present,
            "resumed": self.resumed,
            "samples": {
                name: sorted(keys)[:SAMPLE_KEYS]
                for name, keys in (("lost", self.lost), ("replayed_lost", self.replayed_lost),
                                   ("missing", self.missing),
                                   ("duplicated", self.duplicated),
                                   ("failed_present", self.failed_present))
                if keys
            },  # fmt: skip
            **self.extra,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def window(records: Sequence[WriteRecord], failover: Failover) -> Window:
    """The unavailability window over ``records`` (see :class:`Window`)."""
    old = [r.ended for r in records if r.status == "acked" and r.ended <= failover.crash_at]
    new = [r.ended for r in _acked_by(records, failover.new_region)]
    return Window(
        last_ack=max(old, default=None), first_ack=min(new, default=None),
        crash_at=failover.crash_at,
    )  # fmt: skip


def _acked_by(records: Iterable[WriteRecord], region: str) -> list[WriteRecord]:
    return [r for r in records if r.status == "acked" and r.served_by == region]


def latency_before_crash(records: Iterable[WriteRecord], failover: Failover) -> Latency:
    """Latency of the writes the old primary acknowledged before it crashed."""
    old = _acked_by(records, failover.old_region)
    return Latency.of([r.latency_ms for r in old if r.ended <= failover.crash_at])


def latency_after_resume(records: Iterable[WriteRecord], failover: Failover,
                         resumed_at: float | None) -> Latency:  # fmt: skip
    """Latency of the writes started once the new primary had answered (``resumed_at``): what
    the apps see after the failover, before anyone changes their configuration."""
    new = _acked_by(records, failover.new_region)
    return Latency.of([r.latency_ms for r in new if resumed_at is not None
                       and r.started >= resumed_at])  # fmt: skip


def must_survive(record: WriteRecord, failover: Failover) -> bool:
    """True when an acked write must be on the new primary: the new primary committed it, or
    its LSN shows it had reached the standby before promotion."""
    if record.served_by == failover.new_region:
        return True
    return record.lsn is not None and record.lsn <= failover.standby_lsn


def summarize(
    mode: Mode,
    records: Sequence[WriteRecord],
    failover: Failover,
    counts: Mapping[str, int],
    *,
    regions: Sequence[str],
    standby_state: str | None = None,
) -> ModeReport:
    """Judge one drill run: ``counts`` is rows per key on the new primary (absent: none)."""
    present = {key for key, n in counts.items() if n > 0}
    acked = [r for r in records if r.status == "acked"]
    survive = [r for r in acked if must_survive(r, failover)]
    at_risk = [r for r in acked if not must_survive(r, failover)]
    reached = [r for r in survive if r.served_by != failover.new_region]
    outcomes: dict[str, dict[str, int]] = {}
    for name in (*regions, "all"):
        mine = [r for r in records if name == "all" or r.region == name]
        tally = Counter(r.status for r in mine)
        outcomes[name] = {s: tally.get(s, 0) for s in ("acked", "unknown", "failed")}
    windows = {"all": window(records, failover)}
    windows.update({reg: window([r for r in records if r.region == reg], failover)
                    for reg in regions})  # fmt: skip
    return ModeReport(
        mode=mode,
        standby_state=standby_state,
        failover=failover,
        attempted=len(records),
        outcomes=outcomes,
        errors=dict(Counter(r.error for r in records if r.error)),
        windows=windows,
        latency={
            reg: latency_before_crash([r for r in records if r.region == reg], failover)
            for reg in regions
        },
        latency_after={
            reg: latency_after_resume(
                [r for r in records if r.region == reg], failover, windows[reg].first_ack
            )
            for reg in regions
        },
        reached_standby=len(reached),
        reached_standby_present=sum(r.key in present for r in reached),
        beyond_standby_present=sum(r.key in present for r in at_risk),
        lost=[r.key for r in at_risk if r.key not in present],
        replayed_lost=[r.key for r in at_risk if r.replicated and r.key not in present],
        missing=[r.key for r in survive if r.key not in present],
        duplicated=[key for key, n in counts.items() if n > 1],
        failed_present=[r.key for r in records if r.status == "failed" and r.key in present],
        unknown_present=sum(r.status == "unknown" and r.key in present for r in records),
        resumed={reg: windows[reg].first_ack is not None for reg in regions},
        records=list(records),
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
