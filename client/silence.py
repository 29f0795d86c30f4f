"""Noticing that this region's progress subject is silent, and saying why once.

With ``FLY_REGION=lxa`` the tracker listens on ``writebus.lsn.lxa``, where nobody publishes, and
every write falls back to polling the database. :class:`SilenceWatch` checks every heartbeat;
after ``after`` heartbeats without a broadcast it listens once on ``<prefix>.lsn.>`` for a couple
of heartbeats and logs **one** warning naming the regions that are heard and the likely typo --
or, when this region is heard but not from the replica this process names
(``WRITEBUS_REPLICA_ID``), the replicas that are. It warns again only after broadcasts came
back and then stopped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Set
from typing import Any

from writebus.client.log import get_logger
from writebus.client.protocol import LsnUpdate, decode, encoding_of
from writebus.client.region import likely_region
from writebus.client.subjects import Subjects
from writebus.client.transport import NatsClient

log = get_logger("writebus.client.tracker")


def silence_message(
    region: str, heard: set[str], *, replica_id: str = "", replicas: Set[str] = frozenset()
) -> str:
    """What to tell the operator when ``region`` is silent and ``heard`` regions are not --
    or, for a process naming its ``replica_id``, when ``region`` is heard from ``replicas``
    alone."""
    if replica_id and replicas:
        guess = likely_region(replica_id, replicas)
        hint = f"; did you mean {guess!r}?" if guess else "."
        return (
            f"this process follows replica {replica_id!r} (WRITEBUS_REPLICA_ID), but region "
            f"{region!r} broadcasts from {', '.join(sorted(replicas))}{hint} Writes wait by "
            "polling the database meanwhile"
        )
    if not heard:
        return (
            f"no progress broadcasts from any region (listening on region {region!r}): is a bus "
            "node running, and is WRITEBUS_PREFIX the same as the bus's?"
        )
    others = ", ".join(sorted(heard))
    guess = likely_region(region, heard)
    hint = f"; did you mean {guess!r}?" if guess else "."
    return (
        f"this process's region is {region!r} (FLY_REGION/MY_REGION), but the regions "
        f"broadcasting are {others}{hint} Writes wait by polling the database meanwhile"
    )


class SilenceWatch:
    """Warns once per silent spell of this region's progress subject."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        prefix: str,
        region: str,
        heartbeat: float,
        last_heard: Callable[[], float | None],
        after: int = 3,
        replica_id: str = "",
    ) -> None:
        self.nc = nc
        self.replica_id = replica_id
        self.subjects = Subjects(prefix)
        self.region = region
        self.heartbeat = heartbeat
        self.last_heard = last_heard
        self.after = after
        self.warnings = 0
        self._started = time.monotonic()
        self._warned = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (a named task)."""
        self._task = asyncio.create_task(self._run(), name=f"writebus-silence-{self.region}")

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _silent_for(self) -> float:
        last = self.last_heard()
        return time.monotonic() - (last if last is not None else self._started)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)  # a periodic check, not synchronisation
            if self._silent_for() < self.after * self.heartbeat:
                self._warned = False
                continue
            if self._warned:
                continue
            heard, replicas = await self._listen(2 * self.heartbeat)
            if self._silent_for() < self.after * self.heartbeat:
                continue  # it spoke while we listened
            self._warned = True
            self.warnings += 1
            log.warning(
                "tracker.region_silent",
                region=self.region,
                heard=sorted(heard),
                message=silence_message(
                    self.region, heard, replica_id=self.replica_id, replicas=replicas
                ),
            )

    async def _listen(self, seconds: float) -> tuple[set[str], set[str]]:
        """The other regions heard broadcasting within ``seconds``, and this region's
        replicas heard."""
        heard: set[str] = set()
        replicas: set[str] = set()
        prefix = f"{self.subjects.prefix}.lsn."

        async def on(msg: Any) -> None:
            region = msg.subject[len(prefix) :]
            if region == self.region:
                with contextlib.suppress(Exception):  # a bad broadcast says nothing here
                    replicas.add(
                        decode(msg.data, LsnUpdate, encoding_of(msg.headers, msg.data)).replica_id
                    )
            elif region:
                heard.add(region)

        try:
            sub = await self.nc.subscribe(self.subjects.lsn_all, cb=on)
        except Exception:
            return heard, replicas
        try:
            await asyncio.sleep(seconds)  # listening for a bounded window
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return heard, replicas
