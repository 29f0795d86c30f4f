"""Health verdicts for ``/healthz`` and ``/readyz``: pure functions of what the node knows.

``/healthz`` says the process is up and connected to NATS and to its database. ``/readyz``
adds replication: with ``?max_lag=SECONDS`` (and/or ``max_lag_bytes``) it also fails while the
local replica lags more than the bound, as Patroni's ``/replica?lag=`` and LiteFS's max-lag check
do -- load balancers send reads only to replicas that are fresh enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class HealthFacts:
    """What the node knows about itself right now."""

    region: str
    role: str | None
    nats_connected: bool
    database_ok: bool
    database_error: str | None = None
    #: The local replica's lag as this node measured it (0 on the primary; None: unknown).
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    version: str = ""
    #: Why the node is not doing its job (fenced by the split-brain guard...), if it is not.
    problem: str | None = None


def healthz(f: HealthFacts) -> tuple[int, dict[str, Any]]:
    """200 when NATS and the database are reachable, else 503; the body says which failed."""
    checks: dict[str, Any] = {
        "nats": {"ok": f.nats_connected},
        "database": {"ok": f.database_ok, **({"error": f.database_error} if f.database_error else {})},
    }
    # "starting": still listening for a newer primary, or making its tables; no writes yet.
    starting = f.role in (None, "starting")
    ok = f.nats_connected and f.database_ok and not starting and f.problem is None
    if f.problem is not None:  # a failed take-over is "starting" too: say why
        checks["role"] = {"ok": False, "error": f.problem}
    elif starting:
        checks["role"] = {"ok": False, "error": "the node is still starting"}
    body = {"status": "ok" if ok else "fail", "region": f.region, "role": f.role,
            "version": f.version, "checks": checks}
    return (200 if ok else 503), body


def readyz(
    f: HealthFacts, *, max_lag: float | None = None, max_lag_bytes: int | None = None
) -> tuple[int, dict[str, Any]]:
    """:func:`healthz`, and 503 when the local replica lags more than ``max_lag`` seconds or
    ``max_lag_bytes`` bytes (an unknown lag counts as too much when a bound is given)."""
    code, body = healthz(f)
    lag: dict[str, Any] = {"bytes": f.lag_bytes, "seconds": f.lag_seconds, "ok": True}
    reasons = []
    if max_lag is not None:
        lag["max_seconds"] = max_lag
        if f.lag_seconds is None:
            reasons.append("replay lag unknown (no primary announcement heard lately)")
        elif f.lag_seconds > max_lag:
            reasons.append(f"replica {f.lag_seconds:.3f}s behind, over {max_lag:g}s")
    if max_lag_bytes is not None:
        lag["max_bytes"] = max_lag_bytes
        if f.lag_bytes is None:
            reasons.append("replay lag in bytes unknown")
        elif f.lag_bytes > max_lag_bytes:
            reasons.append(f"replica {f.lag_bytes} bytes behind, over {max_lag_bytes}")
    if reasons:
        lag.update(ok=False, error="; ".join(reasons))
    body["checks"]["lag"] = lag
    if reasons:
        body["status"] = "fail"
        code = 503
    return code, body
