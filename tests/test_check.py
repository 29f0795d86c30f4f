"""`writebus check` on the real two-region stack: a healthy node passes, each misconfiguration
the issue names fails with the reason and the fix."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from writebus.bus.check import run_check
from writebus.bus.checklist import CHECK_NAMES, Status
from writebus.client.version import VERSION

REPO = Path(__file__).resolve().parent.parent
LISTEN = "2.5"


def _run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`writebus check` as a deploy hook runs it: a fresh process with only ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "writebus", "check", "--listen", LISTEN, *args],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def _lines(out: str) -> dict[str, str]:
    """The first line of each check in the text output, by check name."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] in CHECK_NAMES and words[1] not in found:
            found[words[1]] = line
    return found


def _closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_healthy_replica_region_passes_in_text(stack: Any, buses: Any) -> None:
    """A correct lax environment: exit 0, a ✓ for every check, lines within 80 columns."""
    out = _run(stack.env("lax"))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = _lines(out.stdout)
    assert list(lines) == list(CHECK_NAMES), out.stdout
    assert all(line.startswith("✓ ") for line in lines.values()), out.stdout
    assert "✗" not in out.stdout
    assert out.stdout.rstrip().endswith(f"all {len(CHECK_NAMES)} checks passed")
    assert max(len(line) for line in out.stdout.splitlines()) <= 80, out.stdout
    assert "syd, lax" in lines["regions"]


def test_healthy_replica_region_passes_in_json(stack: Any, buses: Any) -> None:
    """--json: one object, ok true, every check listed with name/ok/detail/fix; the bus in syd
    reports role primary and its version."""
    out = _run(stack.env("lax"), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert report["region"] == "lax" and report["primary_region"] == "syd"
    assert [c["name"] for c in report["checks"]] == list(CHECK_NAMES)
    for c in report["checks"]:
        assert c["ok"] is True and c["fix"] is None and c["detail"], c
    bus = next(c for c in report["checks"] if c["name"] == "bus")
    assert "role primary" in bus["detail"] and VERSION in bus["detail"]
    lag = next(c for c in report["checks"] if c["name"] == "lag")
    assert "behind the primary" in lag["detail"]


async def test_healthy_primary_region_passes(stack: Any, buses: Any) -> None:
    """In syd, the primary's own announcements count as this region's broadcasts."""
    report = await run_check(stack.env("syd"), listen_seconds=float(LISTEN))
    assert report.ok, report.render()
    assert "(primary)" in report.check("progress").detail
    assert "primary region reads the primary" in report.check("lag").detail


def test_misspelled_region_names_the_intended_one(stack: Any, buses: Any) -> None:
    """FLY_REGION=lxa: exit 1, the regions broadcasting are listed and lax is named as the
    likely intended region."""
    out = _run(stack.env("lax", FLY_REGION="lxa"))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = _lines(out.stdout)
    assert lines["regions"].startswith("✗ "), out.stdout
    assert lines["progress"].startswith("✗ "), out.stdout
    assert "FLY_REGION=lxa, but the regions broadcasting are syd, lax" in " ".join(
        out.stdout.split()
    )
    assert "did you mean FLY_REGION=lax?" in " ".join(out.stdout.split())
    assert lines["bus"].startswith("✓ ") and lines["role"].startswith("✓ "), out.stdout


async def test_primary_region_unset_fails_the_role_check(stack: Any, buses: Any) -> None:
    """In syd with PRIMARY_REGION unset, the app thinks it is a replica region: the role check
    fails and its fix says to set PRIMARY_REGION=syd."""
    env = stack.env("syd")
    del env["PRIMARY_REGION"]
    report = await run_check(env, listen_seconds=float(LISTEN))
    assert not report.ok and report.exit_code == 1
    role = report.check("role")
    assert role.status is Status.FAIL, report.render()
    assert "pg_is_in_recovery() is false" in role.detail
    assert "PRIMARY_REGION=syd" in role.fix
    regions = report.check("regions")
    assert regions.status is Status.FAIL and "announced from syd" in regions.detail
    assert report.check("bus").status is Status.FAIL  # nobody serves writebus.rpc.local


def test_unreachable_nats_fails_fast_without_traceback(stack: Any) -> None:
    """NATS_URL pointing nowhere: ✗ within a few seconds, exit 1, one reason, no traceback; the
    checks that need NATS are skipped and say so, the database is still checked."""
    env = stack.env("lax", NATS_URL="nats://127.0.0.1:1", WRITEBUS_CONNECT_TIMEOUT="2")
    start = time.monotonic()
    out = _run(env, timeout=30)
    elapsed = time.monotonic() - start
    assert out.returncode == 1, out.stdout + out.stderr
    assert elapsed < 8, elapsed
    assert "Traceback" not in out.stdout + out.stderr
    lines = _lines(out.stdout)
    assert lines["nats"].startswith("✗ ") and "connection refused" in lines["nats"], out.stdout
    for name in ("bus", "progress", "regions"):
        assert lines[name].startswith("- ") and "needs NATS" in lines[name], out.stdout
    assert lines["database"].startswith("✓ "), out.stdout


async def test_wrong_database_port_reports_the_servers_reason(stack: Any, buses: Any) -> None:
    """DATABASE_URL with a wrong port: the database check fails with libpq's reason and a fix
    naming the port; the role check, which needs the database, is skipped."""
    params = conninfo_to_dict(stack.database_url("lax"))
    params["port"] = str(_closed_port())
    env = stack.env("lax", DATABASE_URL=make_conninfo(**params))
    report = await run_check(env, listen_seconds=1.5, timeout=3)
    database = report.check("database")
    assert database.status is Status.FAIL, report.render()
    assert "refused" in database.detail.lower() and params["port"] in database.detail
    assert "port" in database.fix
    assert report.check("role").status is Status.SKIP
    assert report.check("nats").ok and report.exit_code == 1


async def test_a_malformed_bus_setting_fails_the_settings_check(stack: Any) -> None:
    """A bus node's own setting is checked too: ``WRITEBUS_ALLOW_SQL=flase`` passed, and
    ``writebus serve`` then refused to start on it."""
    env = {**stack.env("syd"), "WRITEBUS_ALLOW_SQL": "flase"}
    report = await run_check(env, listen_seconds=0.5)
    assert not report.ok and report.exit_code == 1
    check = report.check("settings")
    assert check.status is Status.FAIL and "WRITEBUS_ALLOW_SQL='flase'" in check.detail
