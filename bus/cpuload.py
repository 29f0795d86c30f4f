"""How many committer slots to keep open: all of them while there is CPU to spare, one when not.

A second group in flight (:mod:`writebus.bus.committer`) pays off while the first waits on the
database: the worker prepares and sends it in time it would otherwise spend idle, and a write
that arrives meanwhile starts at once. When the CPU is what limits -- the worker's own process
near a core, or a machine it shares with Postgres near all of its cores -- a second group buys
no overlap; it only splits the queue into smaller groups, each paying a group's fixed cost. One
group in flight then makes groups about twice as large: measured on a 2-core machine running
the worker, Postgres and the load, a fifth less worker CPU per write and no fewer writes per
second (docs/operations.md has the figures, and the case of a database a network hop away).

:class:`SlotPolicy` decides, from how busy the CPU was (pure, with hysteresis so that it does
not flap at one threshold); :class:`CpuSampler` measures: the machine from ``/proc/stat`` where
there is one (Linux), this process from :func:`time.process_time`, and -- in a container
limited to fewer cores than the machine has -- its control group's use of its limit
(:mod:`writebus.bus.cgroup`); the busiest counts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from writebus.bus import cgroup
from writebus.bus.cgroup import CgroupCpu
from writebus.client.log import get_logger

log = get_logger("writebus.bus.cpuload")

#: Busy fraction at which the extra slots close, and at which they open again. The gap is
#: wider than what closing saves (a fifth of the worker's CPU per write): a worker at 0.9 of a
#: core that closes falls to about 0.72, not below 0.6, so it does not reopen at once.
CLOSE_AT: Final = 0.9
OPEN_AT: Final = 0.6
#: Samples in a row that must agree before the slots change: half a second to close, a second
#: to reopen (one busy or idle moment changes nothing).
CLOSE_AFTER: Final = 2
OPEN_AFTER: Final = 4
#: Seconds between samples.
INTERVAL: Final = 0.25

_PROC_STAT: Final = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU seconds: ``busy`` of ``total`` (all cores, for a machine)."""

    busy: float
    total: float


def parse_proc_stat(text: str, ticks_per_second: float = 100.0) -> CpuTimes | None:
    """The machine's cumulative CPU times from ``/proc/stat``'s ``cpu`` line (idle and iowait
    count as not busy; steal as busy: time the machine wanted and did not get); None when the
    line is missing or malformed."""
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] != "cpu":
            continue
        try:
            ticks = [int(f) for f in fields[1:9]]
        except ValueError:
            return None
        if len(ticks) < 5:
            return None
        total = sum(ticks)
        idle = ticks[3] + ticks[4]
        return CpuTimes((total - idle) / ticks_per_second, total / ticks_per_second)
    return None


def busy_share(used: float, elapsed: float, cores: float = 1.0) -> float | None:
    """The share of ``cores`` that ``used`` CPU seconds took in ``elapsed`` seconds (clamped
    to 0..1); None when no time passed or there are no cores. Every figure the sampler takes
    -- the machine's, the process's, a control group's -- is one of these."""
    if elapsed <= 0 or cores <= 0:
        return None
    return min(1.0, max(0.0, used / (elapsed * cores)))


def busy_fraction(before: CpuTimes, after: CpuTimes) -> float | None:
    """The busy share of the time between two readings; None when no time passed."""
    return busy_share(after.busy - before.busy, after.total - before.total)


class SlotPolicy:
    """Open committer slots, from ``max_slots`` down to one while the CPU is busy.

    The extra slots close after ``close_after`` samples in a row at ``close_at`` or above, and
    reopen after ``open_after`` samples in a row below ``open_at``; anything else, an unknown
    fraction (None) included, breaks the run and changes nothing.
    """

    def __init__(
        self,
        max_slots: int,
        *,
        close_at: float = CLOSE_AT,
        open_at: float = OPEN_AT,
        close_after: int = CLOSE_AFTER,
        open_after: int = OPEN_AFTER,
    ) -> None:
        if not 0.0 < open_at < close_at <= 1.0:
            raise ValueError(f"need 0 < open_at < close_at <= 1, got {open_at}, {close_at}")
        self.max_slots = max(1, max_slots)
        self.close_at = close_at
        self.open_at = open_at
        self.close_after = max(1, close_after)
        self.open_after = max(1, open_after)
        self.slots = self.max_slots
        self._run = 0  # samples in a row pointing away from the current slots

    def __repr__(self) -> str:
        return f"<SlotPolicy slots={self.slots}/{self.max_slots}>"

    def update(self, busy: float | None) -> int:
        """The slots to keep open after a sample whose busy fraction was ``busy``."""
        if self.slots < self.max_slots:
            want = busy is not None and busy < self.open_at
            needed, then = self.open_after, self.max_slots
        else:
            want = busy is not None and busy >= self.close_at
            needed, then = self.close_after, 1
        self._run = self._run + 1 if want else 0
        if self._run >= needed:
            self.slots, self._run = then, 0
        return self.slots


@dataclass(frozen=True)
class _GroupUse:
    """A control group's CPU seconds used so far, and the cores it may use."""

    group: CgroupCpu
    seconds: float
    cores: float


class CpuSampler:
    """Busy fraction since the previous :meth:`sample`: the machine's (``/proc/stat``), this
    process's share of one core, or -- when its control group may use fewer cores than the
    machine has (a container's CPU limit) -- the group's share of those; the highest. Reads are
    cheap (small files the kernel writes on demand, about 0.2 ms a sample); what cannot be read
    is left out. ``find_group`` gives the process's group at each sample (by default a
    :class:`writebus.bus.cgroup.Lookup`)."""

    def __init__(
        self,
        proc_stat: Path | None = _PROC_STAT,
        *,
        process_time: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        find_group: Callable[[], CgroupCpu | None] | None = None,
        machine_cpus: int | None = None,
    ) -> None:
        self._path = proc_stat
        self._process_time = process_time
        self._clock = clock
        self._find_group = find_group or cgroup.Lookup()
        self._machine_cpus = machine_cpus or os.cpu_count() or 1
        self._machine = self._read_machine()
        self._process = (process_time(), clock())
        self._used = self._read_group()

    def sample(self) -> float | None:
        """The busy fraction since the last call (None before any time has passed)."""
        machine = self._read_machine()
        now = (self._process_time(), self._clock())
        wall = now[1] - self._process[1]
        used = self._read_group()
        shares = [busy_share(now[0] - self._process[0], wall)]
        if machine is not None and self._machine is not None:
            shares.append(busy_fraction(self._machine, machine))
        if used is not None and self._used is not None and used.group == self._used.group:
            shares.append(busy_share(used.seconds - self._used.seconds, wall, used.cores))
        self._machine, self._process, self._used = machine, now, used
        known = [s for s in shares if s is not None]
        return max(known) if known else None

    def _read_group(self) -> _GroupUse | None:
        """What this process's control group has used, when it may use fewer cores than the
        machine has; None otherwise (then ``/proc/stat`` says the same). The group is looked
        up each time: a process moved to another group is measured in its new one (from the
        sample after the move)."""
        group = self._find_group()
        if group is None:
            return None
        cores = group.cores()
        if cores is None or cores >= self._machine_cpus:
            return None
        used = group.usage()
        return None if used is None else _GroupUse(group, used, cores)

    def _read_machine(self) -> CpuTimes | None:
        if self._path is None:
            return None
        try:
            return parse_proc_stat(self._path.read_text())
        except (OSError, UnicodeDecodeError):
            self._path = None  # not Linux, or no /proc in this container: the process's only
            return None


async def adapt(
    apply: Callable[[int], None],
    policy: SlotPolicy,
    sampler: CpuSampler,
    *,
    interval: float = INTERVAL,
) -> None:
    """Every ``interval`` seconds, ``apply`` the slots ``policy`` chooses for the busy fraction
    ``sampler`` measured, logging each change. Runs until cancelled; should measuring fail, it
    logs why, reopens every slot and ends (the committer then runs as configured)."""
    slots = policy.slots
    try:
        while True:
            await asyncio.sleep(interval)
            busy = sampler.sample()
            now = policy.update(busy)
            if now != slots:
                log.info("committer.slots_changed", slots=now, busy=busy)
                slots = now
            apply(now)
    except Exception:
        log.exception("committer.slots_failed")
        apply(policy.max_slots)
