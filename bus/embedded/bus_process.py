"""The bus service (``python -m writebus serve``) as a child process, for tests, demos and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Self

from writebus.bus.embedded.child import ChildProcess
from writebus.bus.embedded.environ import scrubbed
from writebus.bus.embedded.errors import EmbeddedError, ServerStartError, WaitTimeout
from writebus.client.log import get_logger

log = get_logger("writebus.bus.embedded.bus_process")

#: The bus service logs this event once it serves requests.
READY_MARKER: Final = "bus.ready"
DEFAULT_COMMAND: Final = ("-m", "writebus", "serve")


class BusProcess(ChildProcess):
    """One bus service process, its stdout and stderr going to ``log_path``.

    ``env`` is applied on top of a copy of :data:`os.environ` without the client settings meant
    for the user's own servers (``PG*``, ``NATS_*``: :mod:`.environ`). ``command`` (arguments after the
    Python executable) defaults to ``-m writebus serve``; ``ready_marker`` is the log substring that
    :meth:`wait_ready` waits for. :attr:`pid` and :attr:`returncode` stay readable after the
    process exits.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        log_path: str | os.PathLike[str],
        name: str = "bus",
        command: Sequence[str] = DEFAULT_COMMAND,
        ready_marker: str = READY_MARKER,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.command = (sys.executable, *command)
        self.ready_marker = ready_marker
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        # Scan position in the log and the text kept from the previous read, so a marker
        # split across two reads is still found.
        self._scan_offset = 0
        self._scan_carry = ""

    def __repr__(self) -> str:
        return f"<BusProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    def start(self) -> Self:
        """Start the process (does not wait for readiness: see :meth:`wait_ready`)."""
        if self._proc is not None:
            raise EmbeddedError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = scrubbed(os.environ)  # the user's PG*/NATS_* are not for the stack's servers
        env.update(self.env)
        # Readiness is signalled by a file too, so it does not depend on the log level.
        env["WRITEBUS_READY_FILE"] = str(self.ready_path)
        self.ready_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as logfile:
            self._scan_offset = logfile.tell()
            self._proc = self._spawn(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
            )
        log.info("embedded.bus.started", name=self.name, pid=self._proc.pid, log=str(self.log_path))
        return self

    @property
    def ready_path(self) -> Path:
        """The file the bus node creates once it serves (``WRITEBUS_READY_FILE``)."""
        return self.log_path.with_suffix(".ready")

    def is_ready(self) -> bool:
        """True once the node created its ready file or logged the ready marker."""
        if self.ready_path.exists():
            return True
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._scan_offset)
                data = f.read()
        except OSError:
            return False
        self._scan_offset += len(data)
        text = self._scan_carry + data.decode("utf-8", errors="replace")
        if self.ready_marker in text:
            self._scan_carry = self.ready_marker
            return True
        self._scan_carry = text[-len(self.ready_marker) :]
        return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the log shows the ready marker.

        Raises :class:`ServerStartError` (with the log tail) if the process exits first, and
        :class:`WaitTimeout` if it is still not ready after ``timeout`` seconds.
        """
        if self._proc is None:
            raise EmbeddedError(f"{self.name} not started")
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            code = self._proc.poll()
            if code is not None:
                if self.is_ready():
                    break
                self._reaped(self._proc)
                raise ServerStartError(
                    self.name, f"exited with code {code} before ready", log_tail=self.log_tail()
                )
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"{self.name} ready", timeout, detail=self.log_tail(20))
            time.sleep(0.02)
        log.info("embedded.bus.ready", name=self.name, pid=self._proc.pid)

    async def wait_ready_async(self, timeout: float = 30.0) -> None:
        """:meth:`wait_ready` without blocking the event loop."""
        await asyncio.to_thread(self.wait_ready, timeout)

    def terminate(self) -> None:
        """Ask the process to shut down (SIGTERM)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process."""
        self._signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process to exit; return its exit code, or ``None`` on timeout."""
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reaped(self._proc)
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate, wait up to ``timeout`` seconds, then kill: the process is gone afterwards."""
        if self._proc is None:
            return None
        self.terminate()
        code = self.wait(timeout)
        if code is None:
            log.warning("embedded.bus.stop_timeout", name=self.name, pid=self._proc.pid)
            self.kill()
            code = self.wait()
        return code

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signum)
