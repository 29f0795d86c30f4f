"""Reading a control group's CPU limit and use (:mod:`writebus.bus.cgroup`) from file trees laid
out as cgroup v1 and v2 mount them; a real group with a quota is tested in
tests/test_cgroup_quota.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from writebus.bus.cgroup import (
    CgroupCpu,
    Lookup,
    find,
    parse_cfs,
    parse_cpu_list,
    parse_cpu_max,
    parse_self_cgroup,
    parse_usage_ns,
    parse_usage_usec,
)

V1_SELF = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"
V2_SELF = "0::/kubepods/pod1/ctr\n"


def test_self_cgroup_maps_each_controller_to_its_group() -> None:
    """v1 lines name their controllers; the v2 line (no controllers) goes under ''."""
    groups = parse_self_cgroup(V1_SELF)
    assert groups["cpu"] == groups["cpuacct"] == "/docker/abc"
    assert groups["name=systemd"] == "/docker/abc"
    assert groups[""] == "/"
    assert parse_self_cgroup(V2_SELF) == {"": "/kubepods/pod1/ctr"}
    assert parse_self_cgroup("garbage\n") == {}


def test_quota_files_read_as_cores() -> None:
    """v2 ``cpu.max`` and v1's quota and period; no limit or unreadable: None."""
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cpu_max("50000\n") == 0.5  # the period defaults to 100 ms
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("x 100000") is None
    assert parse_cfs("200000\n", "100000\n") == 2.0
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("100000", "0") is None


def test_usage_files_read_as_seconds() -> None:
    """v2 ``cpu.stat``'s usage_usec; v1 ``cpuacct.usage`` in nanoseconds."""
    assert parse_usage_usec("usage_usec 2500000\nuser_usec 2000000\n") == 2.5
    assert parse_usage_usec("user_usec 1\n") is None
    assert parse_usage_usec("usage_usec many\n") is None
    assert parse_usage_ns("1500000000\n") == 1.5
    assert parse_usage_ns("") is None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_find_v2_reads_the_process_group(tmp_path: Path) -> None:
    """A unified hierarchy at the root: the process's group's cpu.max and cpu.stat."""
    me = tmp_path / "proc-self-cgroup"
    me.write_text(V2_SELF)
    group = tmp_path / "fs" / "kubepods" / "pod1" / "ctr"
    _write(group / "cpu.max", "250000 100000\n")
    _write(group / "cpu.stat", "usage_usec 7000000\n")
    _write(tmp_path / "fs" / "cpu.max", "max 100000\n")  # the root's: not this process's
    _write(group / "cpuset.cpus.effective", "0-3\n")
    cg = find(tmp_path / "fs", me)
    assert cg is not None
    assert (cg.quota(), cg.usage(), cg.cpus(), cg.cores()) == (2.5, 7.0, 4, 2.5)


def test_find_v1_with_separate_cpu_and_cpuacct_mounts(tmp_path: Path) -> None:
    """v1 with ``cpu`` and ``cpuacct`` mounted apart (and not together)."""
    me = tmp_path / "self"
    me.write_text("3:cpuacct:/g\n2:cpu:/g\n0::/\n")
    _write(tmp_path / "fs" / "cpu" / "g" / "cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "fs" / "cpu" / "g" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "fs" / "cpuacct" / "g" / "cpuacct.usage", "3000000000\n")
    cg = find(tmp_path / "fs", me)
    assert cg is not None
    assert (cg.quota(), cg.usage(), cg.cpus()) == (0.5, 3.0, None)  # no cpuset controller
    me.write_text("4:cpuset:/s\n3:cpuacct:/g\n2:cpu:/g\n0::/\n")
    _write(tmp_path / "fs" / "cpuset" / "s" / "cpuset.effective_cpus", "0-1\n")
    cg = find(tmp_path / "fs", me)
    assert cg is not None and cg.cpus() == 2


def test_find_v1_in_a_container_whose_group_is_its_mount_root(tmp_path: Path) -> None:
    """``/proc/self/cgroup`` names the host's path, which the container cannot see: its own
    group is mounted at the root (``cpu,cpuacct`` together)."""
    me = tmp_path / "self"
    me.write_text(V1_SELF)
    root = tmp_path / "fs" / "cpu,cpuacct"
    _write(root / "cpu.cfs_quota_us", "100000\n")
    _write(root / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpuacct.usage", "1000000000\n")
    cg = find(tmp_path / "fs", me)
    assert cg is not None
    assert (cg.quota(), cg.usage()) == (1.0, 1.0)


def test_no_group_files_is_none(tmp_path: Path) -> None:
    """No /proc/self/cgroup, or no CPU files where it points (a hybrid host's v2 without the
    cpu controller, say): nothing to read."""
    assert find(tmp_path / "fs", tmp_path / "missing") is None
    me = tmp_path / "self"
    me.write_text("0::/g\n")
    _write(tmp_path / "fs" / "unified" / "g" / "cpu.stat", "usage_usec 1\n")  # no cpu.max
    assert find(tmp_path / "fs", me) is None


@pytest.mark.parametrize(
    ("quota", "cpuset", "cores"),
    [("150000 100000", "0-7", 1.5), ("max 100000", "0,2-3", 3.0), ("800000 100000", "4-5", 2.0),
     ("max 100000", None, None)],
)  # fmt: skip
def test_cores_are_the_quota_or_the_cpuset_whichever_fewer(
    tmp_path: Path, quota: str, cpuset: str | None, cores: float | None
) -> None:
    """A quota of 1.5 on 8 CPUs is 1.5 cores; no quota on a 3-CPU cpuset is 3; a quota of 8
    pinned to 2 CPUs is 2; neither is no limit."""
    (tmp_path / "cpu.max").write_text(quota)
    if cpuset is not None:
        (tmp_path / "cpuset.cpus.effective").write_text(cpuset + "\n")
    cg = CgroupCpu(
        (tmp_path / "cpu.max",), tmp_path / "cpu.stat", tmp_path / "cpuset.cpus.effective"
    )
    assert cg.cores() == cores


def test_cpu_lists_count_their_cpus() -> None:
    """The kernel's list format: ranges and single CPUs; malformed or empty: unknown."""
    assert parse_cpu_list("0-3,8,10-11\n") == 7
    assert parse_cpu_list("5") == 1
    assert parse_cpu_list("") is None
    assert parse_cpu_list("3-1") is None
    assert parse_cpu_list("a-b") is None


def test_unreadable_files_read_as_unknown(tmp_path: Path) -> None:
    """Files that vanished (the group was removed): no quota, no CPU set, no usage; not an
    exception."""
    cg = CgroupCpu((tmp_path / "cpu.max",), tmp_path / "cpu.stat", tmp_path / "cpuset")
    assert (cg.quota(), cg.cpus(), cg.cores(), cg.usage()) == (None, None, None, None)
    v1 = CgroupCpu((tmp_path / "q", tmp_path / "p"), tmp_path / "cpuacct.usage")
    assert (v1.quota(), v1.cpus(), v1.usage()) == (None, None, None)


def test_lookup_finds_again_only_when_the_process_moved(tmp_path: Path) -> None:
    """The same /proc/self/cgroup text gives the group found before (files are not searched
    again); a new text -- the process was moved -- finds the new group; no file, no group."""
    me = tmp_path / "self"
    me.write_text("0::/a\n")
    for name in ("a", "b"):
        _write(tmp_path / "fs" / name / "cpu.max", "50000 100000\n")
    lookup = Lookup(tmp_path / "fs", me)
    first = lookup()
    assert first is not None and first.usage_file.parent.name == "a"
    (tmp_path / "fs" / "a" / "cpu.max").unlink()  # unseen: the text did not change
    assert lookup() is first
    me.write_text("0::/b\n")
    moved = lookup()
    assert moved is not None and moved.usage_file.parent.name == "b"
    me.unlink()
    assert lookup() is None
