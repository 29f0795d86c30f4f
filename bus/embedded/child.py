"""What every local server wrapper knows about its child process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from writebus.bus.embedded.errors import read_tail


class ChildProcess:
    """Mixin for a wrapper that keeps its child in ``_proc`` and its log at ``log_path``."""

    _proc: subprocess.Popen[bytes] | None

    @property
    def is_running(self) -> bool:
        """True while the child started by ``start()`` is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's process id while running."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the child's log (``""`` without one)."""
        path: Path | None = getattr(self, "log_path", None)
        return read_tail(path, lines=lines) if path is not None else ""
