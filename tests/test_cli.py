"""The ``writebus`` command: the demo and the dev stack, run as a user would."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def _writebus(*args: str) -> list[str]:
    return [sys.executable, "-m", "bus", *args]


def test_demo_reads_its_own_writes() -> None:
    """`writebus demo` starts two regions, writes from lax, reports timings and 0 stale reads."""
    out = subprocess.run(
        _writebus("demo", "--writes", "5", "--delay-ms", "3"),
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stale reads: 0 of 5" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.rstrip().endswith(" ok")]
    assert len(rows) == 5
    assert re.search(r"forward [\d.]+ ms, commit [\d.]+ ms, replay wait [\d.]+ ms", out.stdout)
    # It ends by saying how to watch a stack live.
    assert "writebus top" in out.stdout and "writebus dashboard" in out.stdout


def _events(log_path: Path, name: str) -> list[dict[str, Any]]:
    """The JSON log's events called ``name``."""
    return [e for e in map(json.loads, log_path.read_text().splitlines()) if e.get("event") == name]


def test_dev_up_prints_environment_and_stops_on_sigint(tmp_path: Path) -> None:
    """`writebus dev up` prints each region's environment, keeps running, stops on Ctrl-C, and
    removes its temporary directory -- and its shutdown log says so (kept=false). The user's
    own client settings (PGSSLMODE=require, NATS_TLS_CA) do not reach its servers: they made
    start-up time out."""
    log_path = tmp_path / "dev.stderr"
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            _writebus("dev", "up", "--delay-ms", "1"),
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
            env={**os.environ, "WRITEBUS_LOG_FORMAT": "json", "WRITEBUS_LOG_LEVEL": "info",
                 "PGSSLMODE": "require", "NATS_TLS_CA": "/nowhere/ca.pem"},
        )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line or time.monotonic() > deadline:
                break
        text = "".join(lines)
        assert "Ctrl-C to stop" in text, text + log_path.read_text()
        for var in ("PRIMARY_REGION", "FLY_REGION", "NATS_URL", "DATABASE_URL", "WRITEBUS_PREFIX"):
            assert f"export {var}=" in text
        assert "export FLY_REGION=lax" in text and "export FLY_REGION=syd" in text
        match = re.search(r"# data and logs in (\S+) \(removed on stop", text)
        assert match, text
        base_dir = Path(match.group(1))
        assert base_dir.is_dir()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = _events(log_path, "embedded.stack.stopped")
    assert [(e["base_dir"], e["kept"]) for e in stopped] == [(str(base_dir), False)]
    assert not base_dir.exists()


@pytest.mark.parametrize("command", [["dev", "up"], ["demo", "--writes", "1"]])
def test_missing_postgres_is_one_line_error(command: list[str]) -> None:
    """Without Postgres binaries, `dev up` and `demo` fail with exit code 2 and one line naming
    what is missing, not a traceback."""
    out = subprocess.run(
        _writebus(*command),
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "WRITEBUS_PG_BIN": "/nonexistent/bin", "WRITEBUS_LOG_LEVEL": "warning"},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.splitlines() == [
        f"writebus {command[0]}: postgres not found (searched: $WRITEBUS_PG_BIN=/nonexistent/bin);"
        " fix WRITEBUS_PG_BIN"
    ]


def test_dev_up_rejects_a_base_port_without_room() -> None:
    """--base-port must leave room for the stack's twelve ports below 65536."""
    out = subprocess.run(
        _writebus("dev", "up", "--base-port", "65530"),
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 2
    assert "12 ports" in out.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["demo", "--delay-ms", "-5"], "-5: a delay is 0 or more, and finite"),
        (["demo", "--delay-ms", "nan"], "nan: a delay is 0 or more, and finite"),
        (["dev", "up", "--delay-ms", "inf"], "inf: a delay is 0 or more, and finite"),
        (["demo", "--writes", "0"], "0 is not 1 or more"),
    ],
)
def test_dev_commands_refuse_a_delay_or_count_out_of_range(args: list[str], says: str) -> None:
    """A negative, NaN or infinite delay, or no writes, is refused before any server starts:
    -5 failed in the proxy after Postgres had started, NaN meant no delay, inf hung start-up."""
    out = subprocess.run(_writebus(*args), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2
    assert says in out.stderr and "Traceback" not in out.stderr


def test_dev_up_stops_starting_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C while `writebus dev up` starts stops it there, with what had started: it went
    on starting (up to a minute), printed the environment as if serving, then stopped."""
    log_path = tmp_path / "dev.stderr"
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            _writebus("dev", "up", "--delay-ms", "1"),
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
            env={**os.environ, "WRITEBUS_LOG_FORMAT": "json", "WRITEBUS_LOG_LEVEL": "info"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while '"embedded.pg.initdb"' not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        assert proc.stdout is not None and "Ctrl-C to stop" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = _events(log_path, "embedded.stack.stopped")
    assert len(stopped) == 1 and not Path(stopped[0]["base_dir"]).exists()
