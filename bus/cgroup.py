"""The CPU a Linux control group lets this process use, and how much of it the group has used.

A container's CPU limit (``docker run --cpus``, a Kubernetes CPU limit, a pinned ``--cpuset-cpus``)
is invisible in ``/proc/stat``, which counts every core of the host: a worker limited to one core
on an idle 16-core host has its CPU exhausted while the machine reads as 6 % busy.
:class:`CgroupCpu` reads the group's quota and its cumulative CPU use -- cgroup v2 (``cpu.max``,
``cpu.stat``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``cpuacct.usage``) -- and
:func:`find` locates those files from ``/proc/self/cgroup`` under the usual mount points
(``/sys/fs/cgroup``, with v1's per-controller directories); the cores a group may use are its
quota or its CPU set (``cpuset.cpus.effective``, v1 ``cpuset.effective_cpus``), the fewer. Only
this process's own group is read, not its ancestors' (as Go's automaxprocs does): a quota set
on a parent alone is not seen.

Parsing is pure; the files are read on each call (a limit can change while the process runs).
"""

from __future__ import annotations

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


def parse_cpu_list(text: str) -> int | None:
    """How many CPUs a cpuset list names (``"0-3,8,10-11"`` is 7); None when malformed or
    empty."""
    count = 0
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            return None
        if hi < lo:
            return None
        count += hi - lo + 1
    return count or None


@dataclass(frozen=True)
class CgroupCpu:
    """One control group's CPU files: ``limit_files`` (v2 ``cpu.max``, or v1 quota and period),
    ``usage_file`` (v2 ``cpu.stat`` or v1 ``cpuacct.usage``) and ``cpuset_file`` (the CPUs it
    may run on, when a cpuset controller is there)."""

    limit_files: tuple[Path, ...]
    usage_file: Path
    cpuset_file: Path | None = None

    def quota(self) -> float | None:
        """The group's CPU quota in cores; None when it has none or it cannot be read."""
        match [_read(p) for p in self.limit_files]:
            case [str(cpu_max)]:
                return parse_cpu_max(cpu_max)
            case [str(quota), str(period)]:
                return parse_cfs(quota, period)
        return None

    def cpus(self) -> int | None:
        """How many CPUs the group's cpuset allows; None when unknown."""
        text = _read(self.cpuset_file) if self.cpuset_file is not None else None
        return parse_cpu_list(text) if text is not None else None

    def cores(self) -> float | None:
        """The cores the group may keep busy: its quota or its CPU set, the fewer; None when
        it has neither."""
        limits = [x for x in (self.quota(), self.cpus()) if x is not None]
        return float(min(limits)) if limits else None

    def usage(self) -> float | None:
        """CPU seconds the group has used since it was made; None when unreadable."""
        text = _read(self.usage_file)
        if text is None:
            return None
        if self.usage_file.name == "cpu.stat":
            return parse_usage_usec(text)
        return parse_usage_ns(text)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):  # the group went away, or no such controller
        return None


def find(root: Path = _ROOT, self_cgroup: Path = _SELF) -> CgroupCpu | None:
    """This process's group's CPU files, v1 first (on a hybrid host v2 holds no CPU limit);
    None when there are none (not Linux, no cgroup file system mounted)."""
    return Lookup(root, self_cgroup)()


class Lookup:
    """:func:`find`, called for each sample: looks the files up again only when
    ``/proc/self/cgroup`` changed (the process was moved to another group)."""

    def __init__(self, root: Path = _ROOT, self_cgroup: Path = _SELF) -> None:
        self._root = root
        self._self = self_cgroup
        self._seen: str | None = None
        self._group: CgroupCpu | None = None

    def __call__(self) -> CgroupCpu | None:
        text = _read(self._self)
        if text is None:
            return None
        if text != self._seen:
            self._seen, self._group = text, _find_in(parse_self_cgroup(text), self._root)
        return self._group


def _find_in(groups: dict[str, str], root: Path) -> CgroupCpu | None:
    if "cpu" in groups and "cpuacct" in groups:
        cpu = _locate(groups["cpu"], [root / "cpu,cpuacct", root / "cpu"], "cpu.cfs_quota_us")
        acct = _locate(groups["cpuacct"], [root / "cpu,cpuacct", root / "cpuacct"], "cpuacct.usage")
        if cpu is not None and acct is not None:
            limits = (cpu / "cpu.cfs_quota_us", cpu / "cpu.cfs_period_us")
            cpuset = _locate(groups.get("cpuset", "/"), [root / "cpuset"], "cpuset.effective_cpus")
            cpus = cpuset / "cpuset.effective_cpus" if cpuset is not None else None
            return CgroupCpu(limits, acct / "cpuacct.usage", cpus)
    if "" in groups:
        unified = _locate(groups[""], [root, root / "unified"], "cpu.max")
        if unified is not None:
            cpus = unified / "cpuset.cpus.effective"
            return CgroupCpu((unified / "cpu.max",), unified / "cpu.stat", cpus)
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
