"""How busy the CPU is, and how many committer slots that leaves open (pure parts of
:mod:`writebus.bus.cpuload`); a worker closing and reopening its slots under a real CPU load
is tested in tests/test_group_commit.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from writebus.bus.cpuload import (
    CpuSampler,
    CpuTimes,
    SlotPolicy,
    adapt,
    busy_fraction,
    parse_proc_stat,
)

STAT = (
    "cpu  600 0 200 1000 200 0 0 0 0 0\n"
    "cpu0 300 0 100 500 100 0 0 0 0 0\n"
    "intr 12345 0 0\n"
)


def test_proc_stat_counts_idle_and_iowait_as_not_busy() -> None:
    """user + system are busy, idle + iowait are not (ticks of 1/100 s)."""
    assert parse_proc_stat(STAT) == CpuTimes(busy=8.0, total=20.0)


def test_a_malformed_or_missing_cpu_line_reads_as_unknown() -> None:
    assert parse_proc_stat("intr 1 2 3\n") is None
    assert parse_proc_stat("cpu  1 2 x 4 5\n") is None
    assert parse_proc_stat("cpu  1 2 3\n") is None


def test_busy_fraction_between_two_readings() -> None:
    before, after = CpuTimes(8.0, 20.0), CpuTimes(17.0, 30.0)
    assert busy_fraction(before, after) == pytest.approx(0.9)
    assert busy_fraction(after, after) is None  # no time passed
    assert busy_fraction(CpuTimes(0.0, 0.0), CpuTimes(5.0, 4.0)) == 1.0  # clamped


def test_extra_slots_close_when_busy_and_reopen_only_well_below() -> None:
    """Hysteresis: the slots change at 0.9 and 0.75 busy, not in between; unknown changes
    nothing."""
    policy = SlotPolicy(2)
    assert [policy.update(b) for b in (0.5, 0.89, 0.9, 0.8, None, 0.76, 0.75, 0.85)] == [
        2, 2, 1, 1, 1, 1, 2, 2,
    ]  # fmt: skip
    assert SlotPolicy(1).update(0.1) == 1
    assert "slots=2/2" in repr(policy)
    with pytest.raises(ValueError):
        SlotPolicy(2, close_at=0.5, open_at=0.6)


def test_the_sampler_reads_the_machine_from_proc_stat(tmp_path: Path) -> None:
    """The machine's share between two samples, from the file; the process's own share (near
    zero here) is lower, so the machine's counts."""
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    sampler = CpuSampler(stat)
    stat.write_text("cpu  1500 0 200 1100 200 0 0 0 0 0\n")  # 900 of 1000 ticks busy
    time.sleep(0.01)
    assert sampler.sample() == pytest.approx(0.9)


def test_without_proc_stat_the_process_share_counts(tmp_path: Path) -> None:
    """No /proc (not Linux, or hidden): the process's share of a core, here spinning."""
    sampler = CpuSampler(tmp_path / "missing")
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        pass
    busy = sampler.sample()
    assert busy is not None and busy > 0.5
    assert CpuSampler(None).sample() is not None


async def test_adapt_applies_the_policy_to_each_sample() -> None:
    """The loop hands each sample's slots to ``apply`` until cancelled."""
    shares = iter([0.95, 0.95, 0.5])
    applied: list[int] = []

    class Fake(CpuSampler):
        def __init__(self) -> None:
            pass

        def sample(self) -> float | None:
            return next(shares, 0.5)

    task = asyncio.create_task(adapt(applied.append, SlotPolicy(3), Fake(), interval=0.001))
    while len(applied) < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert applied[:3] == [1, 1, 3]
