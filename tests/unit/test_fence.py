"""The split-brain guard's decision (pure)."""

from __future__ import annotations

from writebus.bus.fence import Fence


def test_a_higher_timeline_fences() -> None:
    """A primary on a newer timeline fences this node, and the reason names it."""
    fence = Fence("syd-1", timeline=1)
    assert fence.heard_primary(region="lax", replica_id="lax-1", timeline=2)
    assert fence.fenced and "lax-1" in fence.reason() and "timeline 2" in fence.reason()


def test_the_same_or_older_timeline_does_not() -> None:
    """Other workers on the same primary, or an older primary, are no reason to stop."""
    fence = Fence("syd-1", timeline=2)
    assert not fence.heard_primary(region="syd", replica_id="syd-2", timeline=2)
    assert not fence.heard_primary(region="syd", replica_id="syd-old", timeline=1)
    assert not fence.fenced and fence.reason() == ""


def test_own_and_unknown_announcements_are_ignored() -> None:
    """This node's own announcements, and ones without a timeline (older nodes), never fence;
    nor does anything before this node knows its own timeline."""
    fence = Fence("syd-1", timeline=1)
    assert not fence.heard_primary(region="syd", replica_id="syd-1", timeline=9)
    assert not fence.heard_primary(region="lax", replica_id="lax-1", timeline=None)
    unknown = Fence("syd-1")
    assert not unknown.heard_primary(region="lax", replica_id="lax-1", timeline=5)


def test_fenced_stays_fenced() -> None:
    """Once fenced, later announcements do not change the recorded rival."""
    fence = Fence("syd-1", timeline=1)
    fence.heard_primary(region="lax", replica_id="lax-1", timeline=2)
    assert not fence.heard_primary(region="fra", replica_id="fra-1", timeline=3)
    assert fence.rival == ("lax", "lax-1", 2)


def test_a_database_moved_to_a_newer_timeline_is_this_nodes_own() -> None:
    """Its address moved to a server promoted again: the newer timeline is taken as this
    node's, and a primary heard on it later is no rival; one newer still is."""
    fence = Fence("syd-1", timeline=2)
    assert not fence.moved(3, region="syd") and fence.timeline == 3 and not fence.fenced
    assert not fence.heard_primary(region="lax", replica_id="lax-1", timeline=3)
    assert fence.heard_primary(region="lax", replica_id="lax-1", timeline=4)
    first = Fence("syd-1")  # not read yet: anything is taken
    assert not first.moved(1, region="syd") and first.timeline == 1


def test_a_database_moved_to_an_older_timeline_fences_the_node() -> None:
    """A database never goes back a timeline: an old primary is behind the address. The node
    is fenced, and the reason names the newer timeline it was on."""
    fence = Fence("syd-1", timeline=7)
    assert fence.moved(1, region="syd")
    assert fence.fenced and fence.rival == ("syd", "syd-1", 7) and fence.timeline == 1
    assert "timeline 7" in fence.reason() and "database's 1" in fence.reason()
    assert not fence.moved(8, region="syd")  # fenced stays fenced
