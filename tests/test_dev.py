"""``writebus dev up`` and ``writebus demo`` clean up after themselves, run as a user would.

Each test runs the real command as a subprocess on a fresh directory under ``/tmp`` (Postgres
runs as an unprivileged user, which cannot reach pytest's private ``tmp_path``). The directory
path is unique, and every process of a stack mentions it -- in its command line (Postgres, NATS)
or its environment (``TMPDIR`` for all, ``WRITEBUS_READY_FILE`` for bus nodes) -- which is how
the tests find survivors.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from writebus.bus.embedded.stackdir import PORT_COUNT, busy_ports

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0
#: How long a killed stack's servers may take to go (Postgres gets a fast shutdown first).
CLEANUP_TIMEOUT = 20.0


def _writebus(*args: str) -> list[str]:
    return [sys.executable, "-m", "writebus", *args]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh world-readable directory under /tmp (TMPDIR of the command under test)."""
    path = Path(tempfile.mkdtemp(prefix="writebus-devtest-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        # Only after a failed test is anything left: do not let it outlive the test run.
        for pid in _processes_mentioning(str(path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    """True while ``pid`` is a process that is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _processes_mentioning(text: str) -> dict[int, str]:
    """Live processes (other than this one) whose command line or environment contains ``text``."""
    needle = text.encode()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid() or not _alive(int(entry)):
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _wait_for(predicate: Callable[[], bool], timeout: float, what: Callable[[], str]) -> float:
    """Poll ``predicate`` until true; return the seconds it took, fail after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout}s: {what()}")
        time.sleep(0.05)
    return time.monotonic() - started


def _free_base_port() -> int:
    """A base port N with N..N+11 free, below the ephemeral range (so no client grabs one)."""
    for _ in range(100):
        base = random.randrange(20000, 32000 - PORT_COUNT)
        if not busy_ports(range(base, base + PORT_COUNT)):
            return base
    raise AssertionError("no free port range found")


@dataclass
class Run:
    """One ``writebus`` subprocess, its stderr in a file and, for dev up, its JSON report."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    report: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log events named ``name``."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def read_line(self, timeout: float = START_TIMEOUT, marker: bytes = b"\n") -> bytes:
        """Stdout up to and including the first line containing ``marker``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                lines = buf.split(b"\n")
                for line in lines[:-1]:
                    if marker in line + b"\n":
                        return line + b"\n"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no {marker!r} within {timeout}s; stderr:\n{self.log()[-3000:]}")
                if sel.select(remaining):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        code = self.proc.wait()
                        pytest.fail(f"exited with {code}; stderr:\n{self.log()[-3000:]}")
                    buf += chunk

    def hard_kill(self) -> None:
        """SIGKILL the command (and reap it, so it is not counted as a zombie survivor)."""
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.hard_kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _start(workdir: Path, *args: str, name: str) -> Run:
    log_path = workdir / f"{name}.stderr"
    env = {
        **os.environ,
        "TMPDIR": str(workdir),
        "WRITEBUS_LOG_FORMAT": "json",
        "WRITEBUS_LOG_LEVEL": "info",
    }
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            _writebus(*args), stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=env
        )
    return Run(proc, log_path)


def _dev_up(workdir: Path, *args: str, name: str) -> Run:
    """Start ``dev up --json`` and read its report."""
    run = _start(workdir, "dev", "up", "--json", "--delay-ms", "1", *args, name=name)
    try:
        run.report = json.loads(run.read_line())
    except BaseException:
        run.close()
        raise
    return run


def _all_pids(report: dict[str, Any]) -> set[int]:
    pids = {pid for region in report["regions"].values() for pid in region["pids"].values()}
    return pids | set(report["pids"].values())


def _assert_nothing_left(workdir: Path, pids: set[int]) -> float:
    """Every pid and every process mentioning ``workdir`` goes within the deadline."""
    took = _wait_for(
        lambda: not any(_alive(p) for p in pids),
        CLEANUP_TIMEOUT,
        lambda: f"still alive: {[p for p in pids if _alive(p)]}",
    )
    _wait_for(
        lambda: not _processes_mentioning(str(workdir)),
        CLEANUP_TIMEOUT,
        lambda: f"survivors: {_processes_mentioning(str(workdir))}",
    )
    return took


# --- tests --------------------------------------------------------------------------------------


def test_dev_up_json_gives_each_region_its_environment_and_server_pids(workdir: Path) -> None:
    """`dev up --json --base-port N` prints one JSON object: per region an app's environment
    (WRITEBUS_PREFIX included) that reaches working servers on ports N..N+11, and the pid of
    each server; a second stack on the same directory or ports is refused in one line."""
    base_port = _free_base_port()
    stack_dir = workdir / "stack"
    run = _dev_up(workdir, "--dir", str(stack_dir), "--base-port", str(base_port), name="first")
    try:
        report = run.report
        assert report["ports"]["pg_primary"] == base_port
        assert report["ports"]["wan_gateway"]["lax"] == base_port + PORT_COUNT - 1
        assert report["base_dir"] == str(stack_dir) and report["kept"] is True
        for region, info in report["regions"].items():
            env = info["env"]
            assert env["FLY_REGION"] == region and env["PRIMARY_REGION"] == "syd"
            assert env["WRITEBUS_PREFIX"] == "writebus"
            assert set(info["pids"]) == {"postgres", "nats_server", "proxy", "bus"}
            assert all(_alive(pid) for pid in info["pids"].values()), info["pids"]
            with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            assert in_recovery == (region == "lax",)
        # The pids are those of the servers they name.
        cmdlines = _processes_mentioning(str(workdir))
        syd = report["regions"]["syd"]["pids"]
        assert f"-D {stack_dir}/pg/syd" in cmdlines[syd["postgres"]]
        assert "nats-server" in cmdlines[syd["nats_server"]]
        assert "writebus serve" in cmdlines[syd["bus"]]
        assert "writebus.bus.embedded.proxy" in cmdlines[syd["proxy"]]

        again = subprocess.run(
            _writebus("dev", "up", "--dir", str(stack_dir)),
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "WRITEBUS_LOG_LEVEL": "warning"},
        )  # fmt: skip
        assert again.returncode == 2
        assert again.stderr.strip().splitlines() == [
            f"writebus dev: another stack is running on {stack_dir} (pid {run.proc.pid}): "
            "stop it first"
        ]
        clash = subprocess.run(
            _writebus("dev", "up", "--dir", str(workdir / "other"), "--base-port", str(base_port)),
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "WRITEBUS_LOG_LEVEL": "warning"},
        )  # fmt: skip
        assert clash.returncode == 2
        assert len(clash.stderr.strip().splitlines()) == 1
        assert f"port {base_port}" in clash.stderr or f"ports {base_port}" in clash.stderr
    finally:
        run.close()
    _assert_nothing_left(workdir, _all_pids(run.report))


def test_sigkilled_dev_up_leaves_no_process_behind(workdir: Path) -> None:
    """When `dev up` is SIGKILLed, every server it listed (Postgres with its backends, both
    nats-servers, the proxy, both bus nodes) is gone within the deadline, and so is its
    watchdog: no process mentioning the stack's directory survives."""
    run = _dev_up(workdir, "--dir", str(workdir / "stack"), name="killed")
    try:
        pids = _all_pids(run.report)
        assert len(pids) == 7 and all(_alive(p) for p in pids)
    finally:
        run.hard_kill()
    took = _assert_nothing_left(workdir, pids)
    print(f"servers gone {took:.2f}s after SIGKILL")
    assert "exited without stopping its servers" in run.log()
    # Postgres got a fast shutdown, not a crash: its lock file is gone.
    assert not (workdir / "stack" / "pg" / "syd" / "postmaster.pid").exists()


def test_dev_up_again_on_the_same_dir_keeps_ports_and_data(workdir: Path) -> None:
    """A second `dev up --dir D`, started right after the first was SIGKILLed, comes back on
    the same ports with the data written in the first run (on the primary and, without a new
    base backup, on the replica); stopped with SIGTERM it logs that D is kept."""
    stack_dir = workdir / "stack"
    first = _dev_up(workdir, "--dir", str(stack_dir), name="first")
    try:
        syd = first.report["regions"]["syd"]["env"]
        with psycopg.connect(syd["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("CREATE TABLE survives (note text)")
            conn.execute("INSERT INTO survives VALUES ('from the first run')")
        replica_version = (stack_dir / "pg" / "lax" / "PG_VERSION").stat().st_ino
    finally:
        first.close()  # SIGKILL: the second run must cope with servers still going away

    second = _dev_up(workdir, "--dir", str(stack_dir), name="second")
    try:
        assert second.report["ports"] == first.report["ports"]
        assert second.report["reused"] is True
        for region in ("syd", "lax"):
            assert second.report["regions"][region]["env"] == first.report["regions"][region]["env"]
        lax = second.report["regions"]["lax"]["env"]
        with psycopg.connect(lax["DATABASE_URL"], autocommit=True) as conn:
            assert conn.execute("SELECT note FROM survives").fetchall() == [
                ("from the first run",)
            ]
        assert (stack_dir / "pg" / "lax" / "PG_VERSION").stat().st_ino == replica_version
        assert not second.events("embedded.pg.basebackup")
        assert not second.events("embedded.pg.initdb")
        assert {e["server"] for e in second.events("embedded.pg.reused")} == {"pg-syd", "pg-lax"}
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(60) == 0
    finally:
        second.close()
    (stopped,) = second.events("embedded.stack.stopped")
    assert stopped["kept"] is True and stopped["base_dir"] == str(stack_dir)
    assert (stack_dir / "pg" / "syd" / "PG_VERSION").exists()
    _assert_nothing_left(workdir, _all_pids(second.report))


def test_sigkilled_demo_leaves_no_process_or_directory_behind(workdir: Path) -> None:
    """When `writebus demo` is SIGKILLed mid-run, its servers stop and its temporary
    directory is removed all the same."""
    run = _start(workdir, "demo", "--writes", "100000", "--delay-ms", "1", name="demo")
    try:
        run.read_line(marker=b"stack up in")
        stack_dirs = list(workdir.glob("writebus-*"))
        assert len(stack_dirs) == 1, stack_dirs
        assert len(_processes_mentioning(str(stack_dirs[0]))) >= 6
    finally:
        run.close()
    _assert_nothing_left(workdir, set())
    assert not stack_dirs[0].exists()
