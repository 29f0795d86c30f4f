"""How busy the CPU is, and how many committer slots that leaves open (pure parts of
:mod:`writebus.bus.cpuload`); a worker closing and reopening its slots under a real CPU load
is tested in tests/test_group_commit.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from writebus.bus.cgroup import CgroupCpu
from writebus.bus.cpuload import (
    CpuSampler,
    CpuTimes,
    SlotPolicy,
    adapt,
    busy_fraction,
    busy_share,
    parse_proc_stat,
)

STAT = "cpu  600 0 200 1000 200 0 0 0 0 0\ncpu0 300 0 100 500 100 0 0 0 0 0\nintr 12345 0 0\n"


def test_proc_stat_counts_idle_and_iowait_as_not_busy() -> None:
    """user + system are busy, idle + iowait are not (ticks of 1/100 s)."""
    assert parse_proc_stat(STAT) == CpuTimes(busy=8.0, total=20.0)


def test_a_malformed_or_missing_cpu_line_reads_as_unknown() -> None:
    """No ``cpu`` line, a non-number, too few fields: unknown, not a guess."""
    assert parse_proc_stat("intr 1 2 3\n") is None
    assert parse_proc_stat("cpu  1 2 x 4 5\n") is None
    assert parse_proc_stat("cpu  1 2 3\n") is None


def test_busy_fraction_between_two_readings() -> None:
    """The busy share of the ticks between readings; none passed: unknown; clamped to 0..1."""
    before, after = CpuTimes(8.0, 20.0), CpuTimes(17.0, 30.0)
    assert busy_fraction(before, after) == pytest.approx(0.9)
    assert busy_fraction(after, after) is None  # no time passed
    assert busy_fraction(CpuTimes(0.0, 0.0), CpuTimes(5.0, 4.0)) == 1.0  # clamped


def test_extra_slots_close_after_busy_samples_in_a_row_and_reopen_after_idle_ones() -> None:
    """Two samples in a row at 0.9 or more close the extra slots; four in a row below 0.6
    reopen them; a sample in between (or unknown) breaks the run."""
    policy = SlotPolicy(2)
    busy = [0.95, 0.5, 0.95, 0.95]  # one busy moment is not enough; two in a row are
    assert [policy.update(b) for b in busy] == [2, 2, 2, 1]
    idle = [0.1, 0.1, 0.7, 0.1, 0.1, None, 0.1, 0.1, 0.1, 0.59]
    assert [policy.update(b) for b in idle] == [1] * 9 + [2]
    assert SlotPolicy(1).update(0.99) == 1
    assert "slots=2/2" in repr(policy)
    with pytest.raises(ValueError):
        SlotPolicy(2, close_at=0.5, open_at=0.6)


def test_a_worker_that_closing_relieved_does_not_reopen_at_once() -> None:
    """Closing saves about a fifth of the worker's CPU: 0.9 of a core becomes about 0.72,
    which must not count as idle (the slots would flap)."""
    policy = SlotPolicy(2)
    for b in (0.9, 0.9):
        policy.update(b)
    assert [policy.update(0.72) for _ in range(20)] == [1] * 20


def test_the_sampler_reads_the_machine_from_proc_stat(tmp_path: Path) -> None:
    """The machine's share between two samples, from the file; the process's own share (near
    zero here) is lower, so the machine's counts."""
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    sampler = CpuSampler(stat, find_group=lambda: None)
    stat.write_text("cpu  1500 0 200 1100 200 0 0 0 0 0\n")  # 900 of 1000 ticks busy
    time.sleep(0.01)
    assert sampler.sample() == pytest.approx(0.9)


def test_without_proc_stat_the_process_share_counts(tmp_path: Path) -> None:
    """No /proc (not Linux, or hidden): the process's CPU over the wall clock between samples
    (clocks injected: 0.3 s of CPU in 0.4 s)."""
    cpu, wall = iter([1.0, 1.3]), iter([10.0, 10.4])
    sampler = CpuSampler(
        tmp_path / "missing",
        process_time=lambda: next(cpu),
        clock=lambda: next(wall),
        find_group=lambda: None,
    )
    assert sampler.sample() == pytest.approx(0.75)
    assert CpuSampler(None).sample() is not None


def _group(tmp_path: Path, quota: str, usage_usec: int, cpus: int = 8) -> CgroupCpu:
    (tmp_path / "cpu.max").write_text(quota + "\n")
    (tmp_path / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 0\n")
    (tmp_path / "cpuset.cpus.effective").write_text(f"0-{cpus - 1}\n")
    return CgroupCpu(
        (tmp_path / "cpu.max",), tmp_path / "cpu.stat", tmp_path / "cpuset.cpus.effective"
    )


def _sampler(group: CgroupCpu, *, cpu: list[float]) -> CpuSampler:
    """A sampler on an 8-core machine without /proc/stat, whose process used ``cpu`` seconds
    at its two readings, one second apart, in ``group``."""
    cpus, wall = iter(cpu), iter([10.0, 11.0])
    return CpuSampler(
        None,
        process_time=lambda: next(cpus),
        clock=lambda: next(wall),
        find_group=lambda: group,
        machine_cpus=8,
    )


def test_a_container_limited_below_the_machine_counts_its_share_of_the_limit(
    tmp_path: Path,
) -> None:
    """A group allowed 1.5 of 8 cores that used 1.35 core-seconds in one second is 90 % busy,
    while the host's /proc/stat (missing here) and this process (0.5 of a core) read lower."""
    group = _group(tmp_path, "150000 100000", 1_000_000)
    sampler = _sampler(group, cpu=[1.0, 1.5])
    (tmp_path / "cpu.stat").write_text("usage_usec 2350000\n")
    assert sampler.sample() == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("quota", "cpus"), [("max 100000", 8), ("1600000 100000", 8), ("max 100000", 16)]
)
def test_a_group_as_wide_as_the_machine_adds_nothing(tmp_path: Path, quota: str, cpus: int) -> None:
    """No quota and every core allowed (or a quota of at least the machine's cores): the
    group's figure is /proc/stat's, so it is not read; the process's share stands."""
    sampler = _sampler(_group(tmp_path, quota, 0, cpus=cpus), cpu=[1.0, 1.2])
    (tmp_path / "cpu.stat").write_text("usage_usec 8000000\n")  # 8 cores busy
    assert sampler.sample() == pytest.approx(0.2)


def test_a_cpuset_narrows_the_cores_without_a_quota(tmp_path: Path) -> None:
    """Pinned to 2 of 8 cores with no quota: 1.8 core-seconds in a second is 90 % busy."""
    sampler = _sampler(_group(tmp_path, "max 100000", 0, cpus=2), cpu=[0.0, 0.0])
    (tmp_path / "cpu.stat").write_text("usage_usec 1800000\n")
    assert sampler.sample() == pytest.approx(0.9)


def test_busy_share_of_some_cores() -> None:
    """Used seconds over elapsed times cores, clamped; nothing elapsed or no cores: unknown."""
    assert busy_share(0.45, 1.0, 0.5) == pytest.approx(0.9)
    assert busy_share(3.0, 1.0, 2.0) == 1.0
    assert busy_share(-1.0, 1.0, 2.0) == 0.0
    assert busy_share(1.0, 0.0, 2.0) is None
    assert busy_share(1.0, 1.0, 0.0) is None


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
    while len(applied) < 6:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert applied[:6] == [3, 1, 1, 1, 1, 3]  # closed on the 2nd busy, reopened on the 4th idle


async def test_adapt_reopens_every_slot_and_ends_when_measuring_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sampler that raises ends the loop with an error log and every slot open: the
    committer then runs as configured, and nothing is left to cancel."""
    applied: list[int] = []

    class Broken(CpuSampler):
        def __init__(self) -> None:
            pass

        def sample(self) -> float | None:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")

    policy = SlotPolicy(2)
    policy.slots = 1
    await asyncio.wait_for(adapt(applied.append, policy, Broken(), interval=0.001), 5)
    assert applied == [2]
    assert "committer.slots_failed" in caplog.text


def test_a_process_moved_to_another_group_is_measured_there_from_the_next_sample(
    tmp_path: Path,
) -> None:
    """The group is looked up at each sample; across a move the two groups' counters are not
    compared (that sample leaves the group out), and the next sample measures the new one."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _group(tmp_path / "a", "50000 100000", 0)
    second = _group(tmp_path / "b", "50000 100000", 90_000_000)  # a far larger counter
    groups = iter([first, second, second])
    wall = iter([10.0, 11.0, 12.0])
    sampler = CpuSampler(
        None, process_time=lambda: 0.0, clock=lambda: next(wall),
        find_group=lambda: next(groups), machine_cpus=8,
    )  # fmt: skip
    assert sampler.sample() == 0.0  # moved: only the process's share (idle)
    (tmp_path / "b" / "cpu.stat").write_text("usage_usec 90450000\n")  # 0.45 s of its 0.5 core
    assert sampler.sample() == pytest.approx(0.9)
