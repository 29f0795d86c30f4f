"""The split-brain guard: a bus node serves writes only while it is the one primary.

Promotion starts a new WAL timeline, so of two databases that both say "I am the primary" (an
old primary restarted after its standby was promoted), the one on the higher timeline is the
true one. Every primary node announces its timeline with its progress (``LsnUpdate.timeline``);
a primary node that hears another node announce a higher timeline is **fenced**: it leaves the
write queue group at once and stays out until an operator rebuilds its database as a standby
of the new primary and restarts it (docs/operations.md).

A node starting on a primary database first listens for ``fence_wait`` seconds (one and a half
heartbeats by default) before it serves writes, so a node restarted on a stale primary never
answers a write. And since a demoted database says so (``pg_is_in_recovery()``), every new
database connection of a primary node checks that too.

:class:`Fence` is the decision, pure; the service does the listening and the leaving.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Fence:
    """Whether this node (``replica_id``, on ``timeline``) has met a newer primary."""

    replica_id: str
    timeline: int | None = None
    rival: tuple[str, str, int] | None = None

    @property
    def fenced(self) -> bool:
        """True once a primary on a higher timeline was heard."""
        return self.rival is not None

    def heard_primary(self, *, region: str, replica_id: str, timeline: int | None) -> bool:
        """Another node announced itself primary on ``timeline``; True if that fences us now."""
        if self.fenced or replica_id == self.replica_id or timeline is None:
            return False
        if self.timeline is not None and timeline > self.timeline:
            self.rival = (region, replica_id, timeline)
            return True
        return False

    def moved(self, timeline: int | None, *, region: str) -> bool:
        """This node's database is on ``timeline`` now (its address moved to another server);
        True if that fences the node. A newer timeline is taken as this node's own (the server
        promoted behind the address). An older one is not: a database never goes back a
        timeline, so an old primary is behind the address, and this node was the newer one."""
        if self.fenced or timeline is None:
            return False
        older, self.timeline = self.timeline, timeline
        if older is not None and timeline < older:
            self.rival = (region, self.replica_id, older)
            return True
        return False

    def reason(self) -> str:
        """Why this node is fenced, for logs and /healthz."""
        if self.rival is None:
            return ""
        region, replica_id, timeline = self.rival
        return (
            f"fenced: {replica_id} in {region} is primary on timeline {timeline}, newer than this "
            f"database's {self.timeline}; rebuild this database as its standby, then restart"
        )
