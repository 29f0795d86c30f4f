"""The embedded two-region stack with a bus node per region, as a test session sees it.

:func:`start_stack` starts :class:`writebus.bus.embedded.Stack` (a Postgres primary in the
primary region, a streaming replica in the other, a nats-server per region joined by a gateway
through a simulated WAN) and one bus node per region, and waits until each region can reach
both nodes. :class:`WritebusStack` is what a test gets: the environment of an app in each
region, client :class:`~writebus.Settings`, the database URLs and the prefix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.stack import Stack
from writebus.client.settings import Settings
from writebus.client.subjects import Subjects


@dataclass(frozen=True)
class WritebusStack:
    """A running two-region stack and its bus nodes.

    ``env(region)`` is the environment of an app in ``region`` (``PRIMARY_REGION``,
    ``FLY_REGION``, ``NATS_URL``, ``DATABASE_URL``, ``WRITEBUS_PREFIX`` and, when configured,
    ``WRITEBUS_PROCEDURES``); ``settings(region)`` the same as client settings. ``stack`` is
    the :class:`~writebus.bus.embedded.Stack` itself (servers, ports, logs).
    """

    stack: Stack
    prefix: str
    #: The ``module:attribute`` of the procedures the bus nodes serve ("" for none).
    procedures: str
    buses: dict[str, BusProcess] = field(repr=False)

    @property
    def primary_region(self) -> str:
        """The region of the Postgres primary (``syd``)."""
        return self.stack.primary_region

    @property
    def replica_region(self) -> str:
        """The region of the streaming replica (``lax``)."""
        return self.stack.replica_region

    @property
    def regions(self) -> tuple[str, str]:
        """``(primary_region, replica_region)``."""
        return self.stack.regions

    @property
    def primary_url(self) -> str:
        """URL of the Postgres primary (direct, not through the WAN)."""
        return self.stack.primary.url

    @property
    def replica_url(self) -> str:
        """URL of the streaming replica."""
        return self.stack.replica.url

    def env(self, region: str) -> dict[str, str]:
        """The environment of an app in ``region``."""
        extra = {"WRITEBUS_PREFIX": self.prefix}
        if self.procedures:
            extra["WRITEBUS_PROCEDURES"] = self.procedures
        return self.stack.env(region, **extra)

    def settings(self, region: str, **changes: Any) -> Settings:
        """Client settings of an app in ``region``; keywords change fields."""
        return Settings.from_env(self.env(region)).replace(**changes)

    def wait_replica_caught_up(self, timeout: float = 10.0) -> None:
        """Block until the replica has replayed everything the primary has flushed (for
        setup done directly on the primary)."""
        self.stack.wait_replica_caught_up(timeout)


def start_stack(
    *,
    procedures: str = "",
    prefix: str = "writebus",
    one_way_delay_ms: float = 5.0,
    pythonpath: Sequence[str] = (),
    timeout: float = 60.0,
) -> WritebusStack:
    """Start the stack and a bus node per region serving ``procedures``.

    ``pythonpath`` goes first on the bus nodes' ``PYTHONPATH`` so they can import the
    procedures module. Raises what the stack or a node raised, after stopping what started.
    """
    stack = Stack(one_way_delay_ms=one_way_delay_ms)
    stack.start(timeout=timeout)
    try:
        path = [*pythonpath, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {"WRITEBUS_PREFIX": prefix, "WRITEBUS_LOG_FORMAT": "json"}
        if procedures:
            env["WRITEBUS_PROCEDURES"] = procedures
        if path:
            env["PYTHONPATH"] = os.pathsep.join(path)
        buses = {
            region: stack.start_bus(region, env=env, log_name=f"bus-{region}")
            for region in stack.regions
        }
        for bus in buses.values():
            bus.wait_ready(timeout)
        _wait_reachable(stack, prefix, timeout)
    except BaseException:
        stack.stop()
        raise
    return WritebusStack(stack=stack, prefix=prefix, procedures=procedures, buses=buses)


def _wait_reachable(stack: Stack, prefix: str, timeout: float) -> None:
    """Wait until each nats-server knows the other region's bus subscriptions.

    Gateways forward a request to another region only once that region's interest has reached
    them; before that an app would hear "no responders" (the client rides through it by
    retrying, but a test's first request should not depend on that).
    """
    subjects = Subjects(prefix)
    for region in stack.regions:
        wanted = [subjects.rpc(region)]
        if region == stack.primary_region:
            wanted.append(subjects.write)
        for other in stack.regions:
            if other != region:
                stack.nats[other].wait_gateway_interest(region, wanted, timeout=timeout)
