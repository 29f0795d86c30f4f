"""NATS subject names. Every subject writebus uses is built here from the prefix."""

from __future__ import annotations

from dataclasses import dataclass

WORKER_QUEUE = "writebus-workers"


@dataclass(frozen=True)
class Subjects:
    """Subjects under one prefix (default ``writebus``)."""

    prefix: str = "writebus"

    @property
    def write(self) -> str:
        """Writes to run on the primary (queue group of primary-region workers)."""
        return f"{self.prefix}.write"

    def rpc(self, region: str) -> str:
        """Procedures to run in ``region``."""
        return f"{self.prefix}.rpc.{region}"

    def lsn(self, region: str) -> str:
        """Replay progress broadcasts of ``region``."""
        return f"{self.prefix}.lsn.{region}"

    @property
    def lsn_all(self) -> str:
        """Wildcard for every region's progress (dashboards)."""
        return f"{self.prefix}.lsn.>"

    def status(self, region: str) -> str:
        """A bus node's health and traffic, in JSON (once a second per node)."""
        return f"{self.prefix}.status.{region}"

    @property
    def status_all(self) -> str:
        """Wildcard for every node's status (dashboards, ``writebus top``)."""
        return f"{self.prefix}.status.>"

    def queue(self, subject: str) -> str:
        """Queue group for a served subject."""
        return WORKER_QUEUE
