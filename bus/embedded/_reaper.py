"""The watchdog's own program: stop a dead parent's servers (run by path, standard library only).

The parent (:mod:`writebus.bus.embedded.watchdog`) starts this file with ``python -I -S`` and
keeps the write end of its stdin. Each line it writes is one JSON command::

    {"op": "watch", "pid": 123, "name": "pg-syd", "signal": 2, "grace": 10.0}
    {"op": "forget", "pid": 123}
    {"op": "remove", "path": "/tmp/writebus-x1y2"}      # a directory to delete afterwards
    {"op": "keep", "path": "/tmp/writebus-x1y2"}

Only the parent holds that pipe, so end of file means the parent is gone, however it died
(SIGKILL included). Then every process group still watched gets its polite signal, then SIGKILL
once its grace period has passed, and the directories are removed once every group is gone.

It imports nothing from writebus (and runs without site-packages), so it starts in a few
milliseconds and cannot fail on an import.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: Extra time after the longest grace period before giving up on a group that ignores SIGKILL
#: (a process stuck in the kernel): the watchdog must end too.
KILL_WAIT = 5.0
POLL_INTERVAL = 0.05


@dataclass
class Entry:
    """One watched process group: its leader's pid, and how to stop it."""

    pid: int
    name: str
    signal: int
    grace: float
    #: The leader's start time (``/proc/<pid>/stat`` field 22) when it was registered, so a
    #: recycled pid is never signalled. ``None`` where there is no ``/proc``.
    starttime: str | None = None
    killed: bool = False


class Registry:
    """What the parent asked for so far: watched groups and directories to remove. No I/O."""

    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self.paths: list[str] = []

    def apply(self, command: dict[str, Any], *, starttime: Callable[[int], str | None]) -> None:
        """Apply one command line from the parent (unknown operations are ignored)."""
        op = command.get("op")
        if op == "watch":
            pid = int(command["pid"])
            self.entries[pid] = Entry(
                pid=pid,
                name=str(command.get("name", pid)),
                signal=int(command.get("signal", signal.SIGTERM)),
                grace=float(command.get("grace", 5.0)),
                starttime=starttime(pid),
            )
        elif op == "forget":
            self.entries.pop(int(command["pid"]), None)
        elif op == "remove":
            path = str(command["path"])
            if path not in self.paths:
                self.paths.append(path)
        elif op == "keep":
            path = str(command["path"])
            if path in self.paths:
                self.paths.remove(path)


def overdue(entries: Iterable[Entry], alive: set[int], elapsed: float) -> list[Entry]:
    """Entries still alive ``elapsed`` seconds after their polite signal, past their grace, and
    not yet SIGKILLed: the ones to SIGKILL now."""
    return [e for e in entries if e.pid in alive and not e.killed and elapsed >= e.grace]


# --- the I/O --------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state is [0], pgrp [2])."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _starttime(pid: int) -> str | None:
    fields = _stat_fields(pid)
    # Field 22 of stat is starttime; after the command name it is at index 19.
    return fields[19] if fields is not None and len(fields) > 19 else None


def _live_groups(pgids: set[int]) -> set[int]:
    """Which of ``pgids`` still have a member that is not a zombie."""
    if os.path.isdir("/proc/self"):
        found: set[int] = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            fields = _stat_fields(int(entry))
            if fields is None or len(fields) < 3 or fields[0] == "Z":
                continue
            pgrp = int(fields[2])
            if pgrp in pgids:
                found.add(pgrp)
        return found
    alive: set[int] = set()
    for pgid in pgids:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.add(pgid)
    return alive


def _same_process(entry: Entry) -> bool:
    """False when the leader's pid now belongs to another process (its start time changed)."""
    if entry.starttime is None:
        return True
    now = _starttime(entry.pid)
    return now is None or now == entry.starttime


def _signal_group(entry: Entry, signum: int) -> None:
    try:
        os.killpg(entry.pid, signum)
    except ProcessLookupError:
        # Not a group leader (or already gone): signal the process itself.
        try:
            os.kill(entry.pid, signum)
        except OSError:
            pass
    except OSError:
        pass


def _say(message: str) -> None:
    try:
        print(f"writebus watchdog: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def stop_groups(entries: list[Entry]) -> list[str]:
    """Signal every group, SIGKILL the ones past their grace, until all are gone.

    Returns the names of the groups that were SIGKILLed.
    """
    entries = [e for e in entries if _same_process(e)]
    for entry in entries:
        _signal_group(entry, entry.signal)
    started = time.monotonic()
    give_up = started + max((e.grace for e in entries), default=0.0) + KILL_WAIT
    pgids = {e.pid for e in entries}
    while True:
        alive = _live_groups(pgids)
        if not alive or time.monotonic() >= give_up:
            break
        for entry in overdue(entries, alive, time.monotonic() - started):
            _signal_group(entry, signal.SIGKILL)
            entry.killed = True
        time.sleep(POLL_INTERVAL)
    return [e.name for e in entries if e.killed]


def main() -> int:
    """Read commands until the parent is gone, then clean up after it."""
    # Terminal signals are for the parent; this process ends when the parent does.
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    parent = os.getppid()
    registry = Registry()
    for raw in sys.stdin.buffer:
        try:
            command = json.loads(raw)
        except ValueError:
            continue
        if isinstance(command, dict):
            registry.apply(command, starttime=_starttime)
    entries = list(registry.entries.values())
    if entries:
        names = ", ".join(f"{e.name} (pid {e.pid})" for e in entries)
        _say(f"parent {parent} exited without stopping its servers; stopping {names}")
        killed = stop_groups(entries)
        if killed:
            _say(f"SIGKILLed after their grace period: {', '.join(killed)}")
    for path in registry.paths:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
