"""The CPU a Linux control group lets this process use, and how much of it the group has used.

A container's CPU limit (``docker run --cpus``, a Kubernetes CPU limit, a pinned ``--cpuset-cpus``)
is invisible in ``/proc/stat``, which counts every core of the host: a worker limited to one core
on an idle 16-core host has its CPU exhausted while the machine reads as 6 % busy.
:class:`CgroupCpu` reads the group's quota and its cumulative CPU use -- cgroup v2 (``cpu.max``,
``cpu.stat``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``cpuacct.usage``) -- and
:func:`find` locates those files from ``/proc/self/cgroup`` under the usual mount points
(``/sys/fs/cgroup``, with v1's per-controller directories). Only this process's own group is
read, not its ancestors' (as Go's automaxprocs does): a limit set on a parent alone is not seen.

Parsing is pure; the files are read on each call (a limit can change while the process runs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_ROOT: Final = Path("/sys/fs/cgroup")
_SELF: Final = Path("/proc/self/cgroup")


def parse_self_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as controller -> group path; the v2 hierarchy under ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out.setdefault("", path)
        for name in controllers.split(","):
            if name:
                out[name] = path
    return out


def parse_cpu_max(text: str) -> float | None:
    """v2 ``cpu.max`` (``"150000 100000"``) as cores (1.5); None for ``max`` (no limit) or an
    unreadable line."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max":
        return None
    return _cores(quota, period or "100000")


def parse_cfs(quota: str, period: str) -> float | None:
    """v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` as cores; None for ``-1`` (no limit)."""
    return _cores(quota.strip(), period.strip())


def _cores(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def parse_usage_usec(cpu_stat: str) -> float | None:
    """Seconds of CPU used, from v2 ``cpu.stat``'s ``usage_usec`` line."""
    for line in cpu_stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value) / 1e6
            except ValueError:
                return None
    return None


def parse_usage_ns(text: str) -> float | None:
    """Seconds of CPU used, from v1 ``cpuacct.usage`` (nanoseconds)."""
    try:
        return int(text.strip()) / 1e9
    except ValueError:
        return None


def allowed_cpus() -> int:
    """Cores this process may run on (its CPU affinity: a cpuset narrows it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CgroupCpu:
    """One control group's CPU files: ``limit_files`` (v2 ``cpu.max``, or v1 quota and period)
    and ``usage_file`` (v2 ``cpu.stat`` or v1 ``cpuacct.usage``)."""

    limit_files: tuple[Path, ...]
    usage_file: Path
    #: CPUs the process may use whatever the quota (its affinity); injectable for tests.
    cpus: Callable[[], int] = allowed_cpus

    def quota(self) -> float | None:
        """The group's CPU quota in cores; None when it has none or it cannot be read."""
        try:
            texts = [p.read_text() for p in self.limit_files]
        except (OSError, UnicodeDecodeError):
            return None
        return parse_cpu_max(texts[0]) if len(texts) == 1 else parse_cfs(texts[0], texts[1])

    def cores(self) -> float:
        """The cores the group may keep busy: its quota or its allowed CPUs, the fewer."""
        cpus = float(self.cpus())
        quota = self.quota()
        return min(quota, cpus) if quota is not None else cpus

    def usage(self) -> float | None:
        """CPU seconds the group has used since it was made; None when unreadable."""
        try:
            text = self.usage_file.read_text()
        except (OSError, UnicodeDecodeError):
            return None
        if self.usage_file.name == "cpu.stat":
            return parse_usage_usec(text)
        return parse_usage_ns(text)


def find(root: Path = _ROOT, self_cgroup: Path = _SELF) -> CgroupCpu | None:
    """This process's group's CPU files, v1 first (on a hybrid host v2 holds no CPU limit);
    None when there are none (not Linux, no cgroup file system mounted)."""
    try:
        groups = parse_self_cgroup(self_cgroup.read_text())
    except (OSError, UnicodeDecodeError):
        return None
    if "cpu" in groups and "cpuacct" in groups:
        cpu = _locate(groups["cpu"], [root / "cpu,cpuacct", root / "cpu"], "cpu.cfs_quota_us")
        acct = _locate(groups["cpuacct"], [root / "cpu,cpuacct", root / "cpuacct"], "cpuacct.usage")
        if cpu is not None and acct is not None:
            limits = (cpu / "cpu.cfs_quota_us", cpu / "cpu.cfs_period_us")
            return CgroupCpu(limits, acct / "cpuacct.usage")
    if "" in groups:
        unified = _locate(groups[""], [root, root / "unified"], "cpu.max")
        if unified is not None:
            return CgroupCpu((unified / "cpu.max",), unified / "cpu.stat")
    return None


def _locate(group: str, mounts: list[Path], probe: str) -> Path | None:
    """The directory of ``group`` holding ``probe`` under the first mount that has it; else a
    mount's root holding it (a container sees its own group as the root of its mount, while
    ``/proc/self/cgroup`` may still name the host's path for it)."""
    relative = group.lstrip("/")
    for mount in mounts:
        if (mount / relative / probe).is_file():
            return mount / relative
    for mount in mounts:
        if (mount / probe).is_file():
            return mount
    return None
