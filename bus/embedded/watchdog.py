"""A watchdog process that stops our servers when this process dies without stopping them.

Every server of the embedded stack (Postgres, nats-server, the WAN proxy, bus nodes, and the
``initdb``/``pg_basebackup`` runs) is started in its own session, so it is the leader of its own
process group, and registered here. The watchdog is a tiny separate process
(:mod:`writebus.bus.embedded._reaper`) reading commands from a pipe whose write end only this
process holds. When this process exits in any way -- SIGKILL included -- the kernel closes the
pipe; the watchdog sees end of file, sends each group still registered its polite stop signal
(Postgres: SIGINT, a fast shutdown; the others: SIGTERM), SIGKILLs the group after a grace
period, removes the temporary directories it was told about, and exits.

Why not ``prctl(PR_SET_PDEATHSIG)``: the signal fires when the *thread* that forked the child
exits, not the process, and the stack starts Postgres and NATS from worker threads (and the demo
calls ``Stack.start`` through ``asyncio.to_thread``); it needs ``preexec_fn``, which is unsafe
with threads; and it reaches the postmaster only, not its backends. A process group killed from
outside covers all of them, whatever user they run as (the watchdog keeps our user: root can
signal the unprivileged Postgres user).

One watchdog serves the whole process (:func:`watchdog`) and lives as long as it does. Forked
children (``multiprocessing`` with fork) close their copy of the pipe and start their own. Where
process groups do not exist (not POSIX) it does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Final

from writebus.client.log import get_logger

log = get_logger("writebus.bus.embedded.watchdog")

REAPER: Final = Path(__file__).with_name("_reaper.py")
SUPPORTED: Final = os.name == "posix" and hasattr(os, "killpg")


class Watchdog:
    """The parent side of one watchdog process: register groups, directories; see the module doc.

    The process is started on first use. If it dies, the next command starts a new one and
    replays every registration, so a registered server is never left unwatched for long.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._watched: dict[int, dict[str, Any]] = {}
        self._paths: list[str] = []
        self._disabled = not SUPPORTED

    def __repr__(self) -> str:
        return f"<Watchdog pid={self.pid} watched={sorted(self._watched)}>"

    @property
    def pid(self) -> int | None:
        """The watchdog process's id, once started."""
        return self._proc.pid if self._proc is not None else None

    def watch(
        self,
        pid: int,
        *,
        name: str,
        stop_signal: int = signal.SIGTERM,
        grace: float = 5.0,
    ) -> None:
        """Stop the process group led by ``pid`` if this process dies first.

        ``stop_signal`` goes to the group first; SIGKILL follows ``grace`` seconds later if any
        member is still alive.
        """
        command = {
            "op": "watch", "pid": pid, "name": name, "signal": int(stop_signal), "grace": grace,
        }  # fmt: skip
        with self._lock:
            self._watched[pid] = command
            self._send(command)

    def forget(self, pid: int) -> None:
        """Stop watching ``pid`` (call once the process has exited and been waited for)."""
        with self._lock:
            if self._watched.pop(pid, None) is not None:
                self._send({"op": "forget", "pid": pid})

    def remove_on_exit(self, path: str | os.PathLike[str]) -> None:
        """Delete the directory ``path`` after stopping the groups, if this process dies first."""
        text = str(path)
        with self._lock:
            if text not in self._paths:
                self._paths.append(text)
                self._send({"op": "remove", "path": text})

    def keep(self, path: str | os.PathLike[str]) -> None:
        """Undo :meth:`remove_on_exit` (the directory was removed already, or is to be kept)."""
        text = str(path)
        with self._lock:
            if text in self._paths:
                self._paths.remove(text)
                self._send({"op": "keep", "path": text})

    def close(self) -> None:
        """Close the pipe: the watchdog stops whatever is still registered, then exits.

        Meant for tests and for forked children; the process-wide watchdog is never closed
        explicitly (the kernel closes the pipe when this process ends).
        """
        with self._lock:
            self._close_pipe()
            self._watched.clear()
            self._paths.clear()

    # --- the process ------------------------------------------------------------------------

    def _send(self, command: dict[str, Any]) -> None:
        """Write one command, starting (or restarting) the watchdog process when needed."""
        if self._disabled:
            return
        line = (json.dumps(command) + "\n").encode()
        for attempt in (1, 2):
            if self._fd is None:
                # A new watchdog is sent the whole current state, this command's effect included.
                self._start()
                return
            try:
                os.write(self._fd, line)
                return
            except OSError as exc:
                log.warning("embedded.watchdog.lost", pid=self.pid, error=repr(exc), attempt=attempt)
                self._close_pipe()

    def _start(self) -> bool:
        """Start the watchdog process and replay what is registered; False if it cannot run."""
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(REAPER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                # Inherited: after a hard kill its one-line report lands in the user's terminal.
                stderr=None,
                # Its own session: a Ctrl-C or hang-up meant for us must not kill it first.
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("embedded.watchdog.unavailable", error=repr(exc))
            self._disabled = True
            return False
        assert proc.stdin is not None
        self._proc = proc
        self._fd = proc.stdin.fileno()
        log.info("embedded.watchdog.started", pid=proc.pid)
        replay = [*self._watched.values(), *({"op": "remove", "path": p} for p in self._paths)]
        try:
            for command in replay:
                os.write(self._fd, (json.dumps(command) + "\n").encode())
        except OSError:
            self._close_pipe()
            return False
        return True

    def _close_pipe(self) -> None:
        proc, self._proc, self._fd = self._proc, None, None
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc is not None:
            # Reap it if it is already gone; otherwise it exits on its own once done.
            with contextlib.suppress(OSError):
                proc.poll()

    def _abandon_after_fork(self) -> None:
        """In a forked child: drop the parent's pipe without telling its watchdog anything."""
        # Closing our copy of the write end sends no EOF: the parent still holds its own.
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        self._proc = None
        self._fd = None
        self._watched.clear()
        self._paths.clear()
        self._lock = threading.Lock()


_default: Watchdog | None = None
_default_lock = threading.Lock()


def watchdog() -> Watchdog:
    """The process-wide :class:`Watchdog` (its process starts on the first registration)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Watchdog()
        return _default


def _after_fork_in_child() -> None:
    global _default, _default_lock
    _default_lock = threading.Lock()
    if _default is not None:
        _default._abandon_after_fork()
        _default = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
