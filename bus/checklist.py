"""The verdicts of ``writebus check``: pure functions from gathered facts to ✓/✗ checks.

:mod:`writebus.bus.check` does the I/O -- it connects to NATS and the database, pings the bus in
the primary region and listens to the progress broadcasts -- and records what it saw in
:class:`Facts`. Everything that *judges* those facts lives here, without I/O, so each verdict
(a misspelled region, a database whose recovery state contradicts the region's role, a lagging
replica) is unit-tested without servers.

A check passes, fails, or is skipped because a fact it needs could not be gathered (NATS down:
nothing was heard). A skipped check is not ``ok``: the command exits non-zero, and the check that
failed first says why.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from writebus.bus.command import number_arg
from writebus.client.region import likely_region

#: The checks in the order they are reported; the JSON output always lists every one.
CHECK_NAMES: tuple[str, ...] = (
    "settings",
    "nats",
    "database",
    "role",
    "bus",
    "progress",
    "regions",
    "lag",
)

DEFAULT_LISTEN = 2.5
DEFAULT_MAX_LAG_SECONDS = 5.0
#: One WAL segment: a healthy replica is rarely further behind than that, even under load.
DEFAULT_MAX_LAG_BYTES = 16 * 1024 * 1024


#: ``writebus check --help``: what is checked, and the lag thresholds (kept within 80 columns).
DESCRIPTION = f"""\
Check this node's configuration, with the app's environment, and print a
checklist: a mark for each check, what was found, and the fix. Exit status 0
when every check passes, 1 otherwise (a check is skipped when what it needs
failed: NATS down skips the checks that need NATS).

  settings  the settings read (FLY_REGION/MY_REGION, PRIMARY_REGION, prefix);
            WRITEBUS_* variables that nothing reads
  nats      NATS reachable and the credentials accepted
  database  the local database (DATABASE_URL or PG*) answers
  role      pg_is_in_recovery() is true exactly outside the primary region
  bus       a bus in the primary region answers writebus.ping as the primary
  progress  this region's progress broadcasts are heard (--listen seconds)
  regions   the regions broadcasting, with a likely typo named
  lag       replica lag: bytes behind the primary (from the broadcasts) and
            seconds since the last replayed transaction (from the database)

Lag fails above --max-lag-bytes (default {DEFAULT_MAX_LAG_BYTES // (1024 * 1024)} MiB). The age of the last replayed
transaction grows whenever the primary is idle, without real lag, so it fails
above --max-lag (default {DEFAULT_MAX_LAG_SECONDS:g} s) only when the replica is also behind in
bytes, or when no broadcast was heard to measure bytes.
"""


class Status(enum.StrEnum):
    """The outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, kw_only=True)
class Check:
    """One line of the checklist: what was found and, when it is wrong, how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        """True when the check passed (a skipped check is not ok)."""
        return self.status is Status.PASS

    def to_dict(self) -> dict[str, Any]:
        """The check as a JSON-ready mapping (``fix`` is null when there is nothing to fix)."""
        return {
            "name": self.name,
            "ok": self.ok,
            "status": str(self.status),
            "detail": self.detail,
            "fix": self.fix or None,
        }


def passed(name: str, detail: str) -> Check:
    """A passing check."""
    return Check(name=name, status=Status.PASS, detail=detail)


def failed(name: str, detail: str, fix: str = "") -> Check:
    """A failing check, with the fix."""
    return Check(name=name, status=Status.FAIL, detail=detail, fix=fix)


def skipped(name: str, reason: str) -> Check:
    """A check that could not run, and why."""
    return Check(name=name, status=Status.SKIP, detail=f"skipped: {reason}")


# -- facts ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    """What the environment says about this node, and which variables said it."""

    region: str
    #: ``"FLY_REGION"`` or ``"MY_REGION"``: the variable the region came from; None = default.
    region_var: str | None
    primary_region: str
    #: Whether ``PRIMARY_REGION`` is set (else the primary region defaults to ``"local"``).
    primary_set: bool
    prefix: str
    #: This node's replica id (``WRITEBUS_REPLICA_ID``), when it follows one replica only.
    replica_id: str = ""

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, region: str, primary_region: str, prefix: str,
        replica_id: str = "",
    ) -> Config:
        """Record the settings read from ``env`` together with the variables they came from."""
        region_var = "FLY_REGION" if env.get("FLY_REGION") else None
        if region_var is None and env.get("MY_REGION"):
            region_var = "MY_REGION"
        return cls(
            region=region,
            region_var=region_var,
            primary_region=primary_region,
            primary_set=bool(env.get("PRIMARY_REGION")),
            prefix=prefix,
            replica_id=replica_id,
        )

    @property
    def is_primary(self) -> bool:
        """True when the settings make this the primary region."""
        return self.region == self.primary_region

    @property
    def region_words(self) -> str:
        """How the region was set, as an operator would write it (``FLY_REGION=lax``)."""
        if self.region_var is None:
            return f"the region is {self.region!r} (FLY_REGION and MY_REGION are unset)"
        return f"{self.region_var}={self.region}"

    @property
    def region_setting(self) -> str:
        """The variable to change to fix the region."""
        return self.region_var or "FLY_REGION (or MY_REGION)"

    @property
    def primary_words(self) -> str:
        """How the primary region was set (``PRIMARY_REGION=syd``)."""
        if not self.primary_set:
            return f"PRIMARY_REGION is unset (default {self.primary_region!r})"
        return f"PRIMARY_REGION={self.primary_region}"


@dataclass(frozen=True, kw_only=True)
class DatabaseFacts:
    """The local database as the check found it."""

    #: ``host:port/dbname`` (no credentials); empty when no database is configured.
    endpoint: str
    #: Why it could not be reached or queried; None when it answered.
    error: str | None = None
    in_recovery: bool | None = None
    #: Seconds since the last replayed transaction committed on the primary (standby only;
    #: None on a primary or before the first replayed transaction).
    replay_age: float | None = None
    server_version: str = ""

    @property
    def configured(self) -> bool:
        """True when DATABASE_URL (or a libpq variable) names a database."""
        return bool(self.endpoint)

    @property
    def answered(self) -> bool:
        """True when the database answered the check's query."""
        return self.configured and self.error is None and self.in_recovery is not None


@dataclass(frozen=True, kw_only=True)
class PingFacts:
    """The answer to ``writebus.ping`` in the primary region."""

    subject: str
    #: The node's map (region, role, replica_id, version, database, in_recovery...).
    info: Mapping[str, Any] | None = None
    error: str | None = None
    rtt_ms: float | None = None


@dataclass(frozen=True, kw_only=True)
class Broadcast:
    """One progress broadcast heard on ``<prefix>.lsn.>``."""

    region: str
    replica_id: str
    role: str
    lsn: int
    #: When it was heard, in monotonic seconds (only the order matters).
    at: float


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Thresholds for the lag check."""

    max_lag_seconds: float = DEFAULT_MAX_LAG_SECONDS
    max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES


@dataclass(frozen=True, kw_only=True)
class Facts:
    """Everything the check gathered. ``None`` marks what could not be gathered."""

    config: Config
    nats_endpoint: str
    #: Why NATS could not be reached; None when connected.
    nats_error: str | None
    database: DatabaseFacts
    #: None when the ping was not sent (no NATS).
    ping: PingFacts | None
    #: None when nothing was listened to (no NATS).
    heard: tuple[Broadcast, ...] | None
    #: Seconds listened to the broadcasts.
    listen: float
    #: This program's version, to compare with the bus's.
    version: str = ""
    #: Unknown ``WRITEBUS_*`` variables, each with its likely intended name.
    unknown_vars: tuple[tuple[str, str | None], ...] = field(default_factory=tuple)


# -- command-line values ---------------------------------------------------------------------


def positive_seconds(text: str) -> float:
    """A ``--listen``/``--timeout``/``--max-lag`` value: seconds, more than zero."""
    value = number_arg(text, float, "a number of seconds")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not more than zero")
    return value


def byte_count(text: str) -> int:
    """A ``--max-lag-bytes`` value: a whole number of bytes, zero or more."""
    value = number_arg(text, int, "a whole number of bytes")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


# -- small helpers ----------------------------------------------------------------------------


def likely_typo(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` most likely misspells (``lxa`` -> ``lax``), or None; see
    :func:`writebus.client.region.likely_region`."""
    return likely_region(name, candidates)


def split_reason(reason: str) -> tuple[str, str]:
    """Split a :class:`~writebus.client.errors.ConnectError` reason such as
    ``"... refused the credentials: check NATS_USER ..."`` into (what happened, the fix)."""
    head, sep, tail = reason.partition(": check ")
    if sep:
        return head, f"check {tail}"
    return reason, ""


def format_bytes(n: int) -> str:
    """``n`` bytes in a human unit (``0 bytes``, ``12.0 KiB``, ``3.5 MiB``)."""
    if n < 1024:
        return f"{n} byte" + ("" if n == 1 else "s")
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
