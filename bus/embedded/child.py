"""What every local server wrapper knows about its child process."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from writebus.bus.embedded.errors import read_tail
from writebus.bus.embedded.watchdog import watchdog


class ChildProcess:
    """Mixin for a wrapper that keeps its child in ``_proc`` and its log at ``log_path``.

    Children are started with :meth:`_spawn`: each in a session of its own, so it leads its own
    process group (one ``killpg`` reaches everything it forks, and a Ctrl-C meant for us does
    not reach it), and registered with the process-wide
    :func:`~writebus.bus.embedded.watchdog.watchdog`, which stops the group with
    :attr:`stop_signal` (then SIGKILL after :attr:`stop_grace` seconds) if this process dies
    without stopping it.
    """

    name: str
    _proc: subprocess.Popen[bytes] | None
    #: The signal that asks this kind of server to shut down cleanly.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    #: Seconds the watchdog waits after :attr:`stop_signal` before SIGKILL.
    stop_grace: ClassVar[float] = 5.0

    @property
    def is_running(self) -> bool:
        """True while the child started by ``start()`` is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The current child's process id: ``None`` before ``start()`` and after ``stop()``.

        It stays readable after the child exits on its own (see :attr:`is_running`).
        """
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The current child's exit code, or ``None`` while it runs (or without a child)."""
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the child's log (``""`` without one)."""
        path: Path | None = getattr(self, "log_path", None)
        return read_tail(path, lines=lines) if path is not None else ""

    def _spawn(self, command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``command`` in a new session and register it with the watchdog."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            list(command), start_new_session=True, **popen_kwargs
        )
        watchdog().watch(
            proc.pid,
            name=getattr(self, "name", Path(command[0]).name),
            stop_signal=self.stop_signal,
            grace=self.stop_grace,
        )
        return proc

    @staticmethod
    def _reaped(proc: subprocess.Popen[bytes]) -> None:
        """Tell the watchdog that ``proc`` has exited and been waited for."""
        watchdog().forget(proc.pid)
