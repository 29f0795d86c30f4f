"""The failover drill: its judgement (pure) and a run on real servers in both replication modes.

The real-server tests run :func:`writebus.bus.drill.failover_on` on a stack of their own (the
drill crashes its primary), then look at the new primary themselves: the report's loss count
must match what is really there.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from tests.support.stack import REPO, TEST_DELAY_MS
from writebus.bus.cli import parser
from writebus.bus.drill import failover_on
from writebus.bus.drillload import TABLE, DrillLoad, classify
from writebus.bus.drilloptions import DrillOptions, from_arguments
from writebus.bus.drilloutput import drill_json, exit_code, latency_cost, render
from writebus.bus.drillreport import (
    Failover,
    Mode,
    ModeReport,
    Status,
    WriteRecord,
    percentile,
    summarize,
)
from writebus.bus.embedded.stack import Stack
from writebus.client.errors import (
    NoWorkerError,
    OutcomeUnknownError,
    ReplicationTimeoutError,
    UnavailableError,
)

# -- the judgement, without servers ---------------------------------------------------------

FAILOVER = Failover(old_region="syd", new_region="lax", crash_at=10.0, standby_lsn=1000)


def rec(key: str, *, region: str = "syd", status: Status = "acked",
        served_by: str | None = "syd", lsn: int | None = 900, started: float = 1.0,
        ended: float = 1.01, replicated: bool = False) -> WriteRecord:
    """A write record with defaults: acked by the old primary before the crash."""
    return WriteRecord(key=key, region=region, request_id=f"id-{key}", status=status,
                       started=started, ended=ended, served_by=served_by, lsn=lsn,
                       replicated=replicated)  # fmt: skip


def judge(records: list[WriteRecord], counts: dict[str, int], mode: Mode = "async") -> ModeReport:
    """summarize() over both regions."""
    return summarize(mode, records, FAILOVER, counts, regions=("syd", "lax"))


def test_acked_writes_beyond_the_standby_and_absent_are_lost_not_missing() -> None:
    """An acked write above the standby's position that is absent counts as lost (async
    allows it); one at or below it that is absent is missing, an invariant violation."""
    records = [
        rec("reached", lsn=1000), rec("beyond-present", lsn=1200), rec("beyond-gone", lsn=1300),
        rec("reached-gone", lsn=999),
        rec("after", region="lax", served_by="lax", lsn=2000, started=11, ended=12),
        rec("after-syd", served_by="lax", lsn=2100, started=11, ended=12.5),
    ]  # fmt: skip
    counts = {"reached": 1, "beyond-present": 1, "after": 1, "after-syd": 1}
    report = judge(records, counts)
    assert report.lost == ["beyond-gone"] and report.replayed_lost == []
    assert report.missing == ["reached-gone"]
    assert report.reached_standby == 2 and report.reached_standby_present == 1
    assert report.beyond_standby_present == 1
    assert not report.ok and "missing" in report.violations[0]


def test_lost_writes_acknowledged_as_replayed_locally_are_counted_apart() -> None:
    """A replica-region write whose call said "replayed here" but that the promoted standby
    lacks is lost like any other, and also counted as a broken read-your-writes promise."""
    records = [rec("plain", lsn=1100),
               rec("promised", region="lax", lsn=1200, replicated=True, ended=11.5)]  # fmt: skip
    report = judge(records, {})
    assert sorted(report.lost) == ["plain", "promised"] and report.replayed_lost == ["promised"]
    assert report.to_json()["replayed_lost"] == 1
    assert "read-your-writes" in render([report])


def test_a_write_acked_by_the_new_primary_must_be_present() -> None:
    """Whatever its LSN, a write the new primary acknowledged is never counted as lost."""
    report = judge(
        [rec("ok"), rec("new", region="lax", served_by="lax", lsn=5000, ended=12)], {"ok": 1}
    )
    assert report.missing == ["new"] and report.lost == []


def test_loss_is_allowed_in_async_mode_but_not_in_sync_mode() -> None:
    """The same lost write passes the async drill and fails the sync one."""
    records = [rec("gone", lsn=1500),
               rec("a", region="lax", served_by="lax", lsn=3000, ended=12),
               rec("b", served_by="lax", lsn=3001, ended=12)]  # fmt: skip
    counts = {"a": 1, "b": 1}
    assert judge(records, counts, "async").ok
    sync = judge(records, counts, "sync")
    assert not sync.ok and "synchronous" in sync.violations[0]


def test_duplicates_failed_writes_present_and_no_resumption_are_violations() -> None:
    """A key applied twice, a write reported not applied yet present, and a region whose
    writes never resumed each break the drill."""
    records = [rec("twice"), rec("failed", status="failed", served_by=None, lsn=None)]
    report = judge(records, {"twice": 2, "failed": 1})
    assert report.duplicated == ["twice"] and report.failed_present == ["failed"]
    assert report.resumed == {"syd": False, "lax": False}
    assert len(report.violations) == 3
    assert exit_code([report]) == 1


def test_windows_run_from_the_last_ack_before_the_crash_to_the_first_new_ack() -> None:
    """The window is measured per region of the app and overall, from the last ack before the
    crash to the first answered by the new primary; an old-primary write whose replay wait
    ended after the crash marks neither end."""
    records = [
        rec("s1", ended=9.9), rec("l1", region="lax", ended=10.05),
        rec("s2", served_by="lax", lsn=2000, started=10, ended=13.0),
        rec("l2", region="lax", served_by="lax", lsn=2001, started=12, ended=12.5),
        rec("u", region="lax", status="unknown", served_by=None, lsn=None, ended=20),
        rec("s3", served_by="lax", lsn=2002, started=13.5, ended=13.6),
    ]  # fmt: skip
    report = judge(records, {k: 1 for k in ("s1", "l1", "s2", "l2", "u", "s3")})
    assert report.windows["syd"].seconds == pytest.approx(3.1)
    assert report.windows["lax"].seconds == pytest.approx(2.5)  # from the crash: no ack before
    assert report.windows["all"].seconds == pytest.approx(12.5 - 9.9)
    assert report.windows["syd"].after_crash == pytest.approx(3.0)
    assert report.outcomes["lax"] == {"acked": 2, "unknown": 1, "failed": 0}
    assert report.unknown_present == 1 and report.ok
    # After the failover: writes started once the region's writes had resumed (s3, not s2).
    after = report.latency_after["syd"]
    assert after.count == 1 and after.p50_ms == pytest.approx(100.0)


def test_latency_counts_writes_acked_by_the_old_primary_before_the_crash() -> None:
    """p50/p99 are nearest-rank over the old primary's acks that ended before the crash; the
    sync cost is the difference per region."""
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    fast = [rec(f"f{i}", ended=1.0 + (i + 1) / 1000) for i in range(10)]
    slow = [rec(f"s{i}", ended=1.0 + (i + 51) / 1000) for i in range(10)]
    late = rec("late", started=9.0, ended=10.5)  # ended after the crash: not counted
    a = judge([*fast, late], {})
    s = judge(slow, {}, "sync")
    assert a.latency["syd"].count == 10 and a.latency["syd"].p50_ms == pytest.approx(5.0)
    assert latency_cost(a, s)["syd"]["p50_ms"] == pytest.approx(50.0)
    assert latency_cost(a, s)["lax"]["p50_ms"] is None


def test_the_json_and_text_reports_carry_the_figures() -> None:
    """The JSON document has each mode, the sync latency cost and the verdict; the text names
    the windows and the verdict; samples list offending keys."""
    records = [rec("x", lsn=1500), rec("y", served_by="lax", lsn=3000, ended=12),
               rec("z", region="lax", served_by="lax", lsn=3001, ended=12)]  # fmt: skip
    reports = [judge(records, {"y": 1, "z": 1}, "async"), judge(records, {"y": 1, "z": 1}, "sync")]
    doc = json.loads(json.dumps(drill_json(reports)))
    assert doc["ok"] is False and set(doc["modes"]) == {"async", "sync"}
    assert doc["modes"]["async"]["lost"] == 1 and doc["modes"]["async"]["ok"] is True
    assert doc["modes"]["sync"]["samples"]["lost"] == ["x"]
    assert "syd" in doc["sync_latency_cost"]
    assert doc["modes"]["async"]["standby_lsn"] == "0/3E8"
    text = render(reports)
    assert "unavailable" in text and "FAILED" in text and "synchronous replication costs" in text


def test_errors_are_classified_by_what_they_say_about_the_write() -> None:
    """Committed (replication timeout) is acked; not applied is failed; the rest unknown."""
    assert classify(ReplicationTimeoutError(5, 1.0, 4, "lax")) == "acked"
    assert classify(NoWorkerError("writebus.write", "syd")) == "failed"
    assert classify(UnavailableError("down")) == "failed"
    assert classify(OutcomeUnknownError("id")) == "unknown"
    assert classify(RuntimeError("a bug")) == "unknown"


class FakeDatabase:
    """Answers writes like a Database: ``hang`` keys never return, ``fail`` keys raise."""

    def __init__(self, region: str, *, fail: str = "", hang: str = "") -> None:
        self.region, self.fail, self.hang = region, fail, hang
        self.calls: list[tuple[str, str]] = []

    async def execute(self, sql: str, params: list[str], **options: Any) -> Any:
        key = params[0]
        self.calls.append((key, options["request_id"]))
        if self.hang and key.endswith(self.hang):
            await asyncio.Event().wait()
        if self.fail and key.endswith(self.fail):
            raise NoWorkerError("writebus.write", "syd")
        return SimpleNamespace(region="syd", lsn=100, duplicate=False, replicated=True)


async def test_the_load_records_every_write_and_drain_gives_up_on_hung_ones() -> None:
    """Writes start on schedule with a fresh request id each; every write ends as one record
    (acked, failed by what its error says, or unknown when drain gives up on it); nothing is
    left running and no write starts after stop."""
    dbs = {"syd": FakeDatabase("syd", fail="000001"), "lax": FakeDatabase("lax", hang="000002")}
    load = DrillLoad(dbs, rate=200.0, tag="t", rpc_timeout=1.0)  # type: ignore[arg-type]
    load.start()
    assert await load.wait_until(lambda ld: min(ld.started.values()) >= 5, 10)
    await load.drain(0.2)
    started = dict(load.started)
    by_key = {r.key: r for r in load.records}
    assert len(by_key) == len(load.records) == sum(started.values())
    assert by_key["t-syd-000001"].status == "failed"
    assert by_key["t-lax-000002"].status == "unknown"
    assert by_key["t-lax-000002"].error == "Cancelled"
    assert by_key["t-syd-000000"].status == "acked" and by_key["t-syd-000000"].replicated
    assert load.acked["syd", "syd"] == started["syd"] - 1
    ids = [rid for db in dbs.values() for _, rid in db.calls]
    assert len(set(ids)) == len(ids)
    assert not load._writes and all(pacer.done() for pacer in load._pacers)


def test_command_line_options() -> None:
    """``drill failover`` parses into DrillOptions; --mode both drills async then sync; bad
    values are refused."""
    args = parser().parse_args(["drill", "failover", "--duration", "2", "--rate", "20",
                                "--delay-ms", "0", "--mode", "sync", "--json"])  # fmt: skip
    options = from_arguments(args)
    assert (options.duration, options.rate, options.delay_ms, options.modes) == (
        2.0, 20.0, 0.0, ("sync",)
    )
    assert args.json
    assert from_arguments(parser().parse_args(["drill", "failover"])).modes == ("async", "sync")
    for bad in (["--rate", "0"], ["--delay-ms", "-1"], ["--mode", "semi"]):
        with pytest.raises(SystemExit):
            parser().parse_args(["drill", "failover", *bad])
    with pytest.raises(ValueError):
        DrillOptions(modes=())


def test_the_documented_drill_commands_parse() -> None:
    """Every ``writebus drill`` command line in docs/operations.md is one the CLI accepts."""
    doc = (REPO / "docs" / "operations.md").read_text()
    lines = [line.split("#")[0].split() for line in doc.splitlines()
             if line.startswith("writebus drill ")]  # fmt: skip
    assert len(lines) >= 2
    for words in lines:
        from_arguments(parser().parse_args(words[1:]))


# -- the drill on real servers ----------------------------------------------------------------

OPTIONS = DrillOptions(duration=1.5, rate=30.0, delay_ms=TEST_DELAY_MS, settle=0.5)


@pytest.fixture(params=["async", "sync"])
def drill_stack(request: pytest.FixtureRequest) -> Iterator[tuple[Mode, Stack]]:
    """A stack of the test's own for one replication mode: the drill crashes its primary."""
    mode: Mode = request.param
    with Stack(one_way_delay_ms=TEST_DELAY_MS, synchronous=mode == "sync") as stack:
        yield mode, stack


async def test_failover_drill_loses_nothing_that_reached_the_standby(
    drill_stack: tuple[Mode, Stack],
) -> None:
    """Under steady writes from both regions the primary is crashed and the standby promoted:
    writes resume in both regions within a bounded window, no write is applied twice, every
    acked write that reached the standby is on the new primary, the report's loss count is
    what the new primary really lacks -- and in sync mode nothing acked is lost."""
    mode, stack = drill_stack
    report = await failover_on(stack, mode=mode, options=OPTIONS)

    assert report.standby_state == mode
    assert report.resumed == {"syd": True, "lax": True}, report.to_json()
    for name, window in report.windows.items():
        assert window.seconds is not None and 0 < window.seconds < 30, (name, window)
    assert report.latency["syd"].count > 10 and report.latency["lax"].count > 10
    assert report.extra["old_node_fenced"] and report.extra["new_node_promoted"]

    # Ground truth: the new primary, read here rather than through the report.
    with psycopg.connect(stack.replica.url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        rows = conn.execute(
            f"SELECT key, count(*), count(DISTINCT request_id) FROM {TABLE} "
            "WHERE key LIKE %s GROUP BY key", [f"{report.extra['tag']}-%"],
        ).fetchall()  # fmt: skip
    present = {key for key, _, _ in rows}
    assert all(n == 1 and ids == 1 for _, n, ids in rows), "a write was applied twice"
    acked = [r for r in report.records if r.status == "acked"]
    absent = {r.key for r in acked if r.key not in present}
    reached = [r for r in acked if r.served_by == "syd" and r.lsn is not None
               and r.lsn <= report.failover.standby_lsn]  # fmt: skip
    assert reached and all(r.key in present for r in reached)
    assert all(r.key in present for r in acked if r.served_by == "lax")
    assert len(report.lost) == len(absent) and set(report.lost) == absent
    assert not any(r.key in present for r in report.records if r.status == "failed")
    if mode == "sync":
        assert absent == set()
    assert report.ok, report.violations


def test_the_command_prints_one_json_report_and_exits_0() -> None:
    """``python -m writebus drill failover --mode sync --json`` runs the drill on a stack of
    its own, prints one JSON report on stdout (progress on stderr) and exits 0: writes resumed
    in both regions, nothing acked was lost, nothing applied twice."""
    command = [sys.executable, "-m", "writebus", "drill", "failover", "--mode", "sync",
               "--duration", "1", "--rate", "20", "--delay-ms", str(TEST_DELAY_MS), "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and list(doc["modes"]) == ["sync"]
    sync = doc["modes"]["sync"]
    assert sync["standby_state"] == "sync" and sync["resumed"] == {"syd": True, "lax": True}
    assert sync["lost"] == 0 and sync["missing"] == 0 and sync["duplicated"] == 0
    assert sync["outcomes"]["all"]["acked"] > 0 and 0 < sync["unavailable"]["all"]["seconds"] < 30
    assert "promoted the lax standby" in done.stderr
