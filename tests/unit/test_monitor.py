"""What a replica monitor relays of the primary's announcements (no database: the
announcements are handed in as messages). The real-server version, a promotion in another
region, is in ``tests/test_failover.py``."""

from __future__ import annotations

import msgspec

from tests.support.fake_nats import FakeMsg
from writebus.bus.monitor import ReplicaMonitor
from writebus.client.protocol import LsnUpdate, encode, lsn_update


def _monitor() -> ReplicaMonitor:
    return ReplicaMonitor(nc=None, dsn="", subject="writebus.lsn.lax",
                          primary_subject="writebus.lsn.syd", region="lax", replica_id="lax-1")  # fmt: skip


def _announced(timeline: int | None, fork: int | None = None, lsn: int = 500) -> LsnUpdate:
    return lsn_update(region="syd", replica_id="syd-1", lsn=lsn, role="primary",
                      in_recovery=False, timeline=timeline, fork_lsn=fork)  # fmt: skip


async def _hear(monitor: ReplicaMonitor, upd: LsnUpdate) -> None:
    await monitor._on_primary(FakeMsg(subject="writebus.lsn.syd", data=encode(upd)))


async def test_the_newest_timeline_and_its_fork_are_kept_and_due_at_once() -> None:
    """Timeline 1 is kept quietly. A promotion -- timeline 2, forked at 300 -- is kept and
    due at the next poll, though the replay has not moved; a stale primary's older timeline,
    or a node before the field, changes nothing. The node hands in announcements from any
    region (``heard_primary``): a standby promoted elsewhere counts the same."""
    m = _monitor()
    await _hear(m, _announced(1))
    assert (m.primary_timeline, m.primary_fork, m._relay_due) == (1, None, False)
    m.heard_primary(msgspec.structs.replace(_announced(2, 300), region="lax"))
    assert (m.primary_timeline, m.primary_fork) == (2, 300)
    assert m._relay_due and m._news.is_set()
    m._relay_due = False
    for stale in (_announced(1), _announced(None), _announced(2, 300)):
        await _hear(m, stale)
        assert (m.primary_timeline, m.primary_fork, m._relay_due) == (2, 300, False)


async def test_a_fork_heard_after_its_timeline_is_filled_in_and_a_bad_one_ignored() -> None:
    """The first announcement of timeline 2 carried no fork (a restarted node), a later one
    does: it is relayed from then on. A malformed fork is not taken; a later timeline
    replaces both."""
    m = _monitor()
    await _hear(m, _announced(2))
    assert (m.primary_timeline, m.primary_fork) == (2, None)
    await _hear(m, msgspec.structs.replace(_announced(2, 300), fork_lsn="not-an-lsn"))
    assert m.primary_fork is None
    await _hear(m, _announced(2, 300))
    await _hear(m, _announced(2, 310))  # not another fork for the same timeline
    assert m.primary_fork == 300
    await _hear(m, _announced(3))
    assert (m.primary_timeline, m.primary_fork) == (3, None)


async def test_the_newest_primary_sets_the_lag_and_a_stale_one_does_not() -> None:
    """Announcements set the primary position the lag counts from. After a promotion the new
    timeline's positions count afresh, though they start below the old timeline's last one;
    a stale primary's later announcement, on the older timeline, counts for nothing."""
    m = _monitor()
    m.state.replayed = 400
    m.lag.replayed_to(400)
    await _hear(m, _announced(1, lsn=900))
    assert m.lag.primary == 900 and m.state.target == 900
    await _hear(m, _announced(2, 500, lsn=600))  # the new primary, forked at 500
    assert m.lag.primary == 600 and m.state.target == 600 and m.lag.lag_bytes() == 200
    await _hear(m, _announced(1, lsn=2000))  # the old primary, back on timeline 1
    assert m.lag.primary == 600 and m.state.target == 600
    m.heard_primary(lsn_update(region="lax", replica_id="r", lsn=5000, role="replica",
                               in_recovery=True))  # fmt: skip
    assert m.lag.primary == 600  # a standby's broadcast is no announcement
