"""The ``writebus`` command: the demo and the dev stack, run as a user would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def test_dev_up_prints_environment_and_stops_on_sigint() -> None:
    """`writebus dev up` prints each region's environment, keeps running, stops on Ctrl-C."""
    proc = subprocess.Popen(
        _writebus("dev", "up", "--delay-ms", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "WRITEBUS_LOG_LEVEL": "warning"},
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line or time.monotonic() > deadline:
                break
        text = "".join(lines)
        assert "Ctrl-C to stop" in text, text
        for var in ("PRIMARY_REGION", "FLY_REGION", "NATS_URL", "DATABASE_URL"):
            assert f"export {var}=" in text
        assert "export FLY_REGION=lax" in text and "export FLY_REGION=syd" in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
