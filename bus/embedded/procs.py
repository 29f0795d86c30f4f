"""Looking at other processes: alive or not, by name, by process group.

Linux answers through ``/proc`` (zombies count as gone, names can be checked); elsewhere a
signal 0 says only whether the pid exists, and group membership is unknown (empty).
"""

from __future__ import annotations

import os

_HAS_PROC = os.path.isdir("/proc/self")


def _stat(pid: int) -> tuple[str, list[str]] | None:
    """``(command name, fields after it)`` of ``/proc/<pid>/stat`` (state is field 0, pgrp 2)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.find("(") + 1 : text.rfind(")")]
    return name, text.rsplit(")", 1)[-1].split()


def is_alive(pid: int, *, name_prefix: str | None = None) -> bool:
    """True when ``pid`` runs and is not a zombie (and its command name starts with
    ``name_prefix``, where that can be checked)."""
    if not _HAS_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = _stat(pid)
    if stat is None:
        return False
    name, fields = stat
    return fields[0] != "Z" and (name_prefix is None or name.startswith(name_prefix))


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still running (zombies do not count)."""
    if not _HAS_PROC:
        return []
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None:
            continue
        fields = stat[1]
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry))
    return members
