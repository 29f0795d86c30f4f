"""ClusterView: every region's position from progress broadcasts (pure bookkeeping; the bus
node's metrics and `writebus top` read it on real servers in tests/test_operability.py and
tests/test_top.py)."""

from __future__ import annotations

from writebus.client.cluster import ClusterView
from writebus.client.protocol import LsnUpdate, lsn_update


def _primary(region: str, lsn: int, timeline: int, rid: str = "") -> LsnUpdate:
    return lsn_update(region=region, replica_id=rid or f"{region}-p", lsn=lsn, role="primary",
                      in_recovery=False, timeline=timeline)  # fmt: skip


def _replica(region: str, lsn: int, rid: str = "") -> LsnUpdate:
    return lsn_update(region=region, replica_id=rid or f"{region}-r", lsn=lsn, role="replica",
                      in_recovery=True)  # fmt: skip


def test_the_lag_counts_from_the_newest_timeline_not_a_dead_primarys_higher_position() -> None:
    """After a failover that lost WAL, the old primary's last position (higher) is not the
    cluster's: lag counts from the new primary, on its newer timeline."""
    view = ClusterView(stale_after=3.0)
    view.observe(_primary("syd", 5000, 1), now=0.0)
    view.observe(_primary("lax", 900, 2), now=1.0)
    view.observe(_replica("fra", 900), now=1.0)
    assert view.primary_lsn(now=1.0) == 900 and view.primary_lsn() == 900
    (fra,) = [r for r in view.rows(now=1.0) if r.region == "fra"]
    assert fra.lag_bytes == 0


def test_with_every_primary_quiet_the_lag_is_not_measured_from_its_last_word() -> None:
    view = ClusterView(stale_after=3.0)
    view.observe(_primary("syd", 5000, 1), now=0.0)
    view.observe(_replica("lax", 4000), now=9.0)
    assert view.primary_lsn(now=9.0) is None and view.primary_lsn() == 5000
    (lax,) = [r for r in view.rows(now=9.0) if r.region == "lax"]
    assert lax.lag_bytes is None  # the sender's own figure: it sent none


def test_a_node_not_heard_for_forget_after_is_dropped() -> None:
    """A redeploy names replicas by host: the old ids stop and are forgotten, not kept as
    rows for good."""
    view = ClusterView(stale_after=3.0, forget_after=60.0)
    view.observe(_replica("lax", 10, "lax-old"), now=0.0)
    view.observe(_replica("lax", 20, "lax-new"), now=30.0)
    assert {r.replica_id for r in view.rows(now=30.0)} == {"lax-old", "lax-new"}
    view.observe(_replica("lax", 30, "lax-new"), now=61.0)
    assert {r.replica_id for r in view.rows(now=61.0)} == {"lax-new"}
