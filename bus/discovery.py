"""NATS service discovery: a bus node answers ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS``.

Registered with nats-py's service framework (``nats.micro``) so ``nats micro ls`` and other
NATS tooling find every worker, with its region, prefix, replica id and version as metadata.

Only discovery goes through ``nats.micro``; requests do not. nats-py runs one subscription's
callbacks one at a time and ``nats.micro`` awaits each endpoint handler inside that callback, so
serving writes through it would handle one request at a time per node -- or, with the handler
spawning tasks to get concurrency back, report processing times that measure nothing. The
workers keep their own bounded-concurrency subscriptions (:mod:`writebus.bus.worker`); their
numbers are in ``/metrics`` and the status messages.
"""

from __future__ import annotations

import re
from typing import Any

from writebus.client.log import get_logger
from writebus.client.transport import NatsClient
from writebus.client.version import VERSION

log = get_logger("writebus.bus.discovery")

SERVICE_NAME = "writebus"
_SEMVER = re.compile(r"^\d+\.\d+\.\d+")


def service_version(version: str = VERSION) -> str:
    """The version in the ``x.y.z`` form the service framework requires."""
    match = _SEMVER.match(version)
    return match.group(0) if match else "0.0.0"


async def register(
    nc: NatsClient, *, region: str, prefix: str, replica_id: str, subjects: list[str]
) -> Any:
    """Register this node for discovery; returns the service (stop it on shutdown), or None
    when the server refused (e.g. no permission on ``$SRV.>``): discovery is optional."""
    from nats.micro import add_service

    try:
        service = await add_service(
            nc,  # type: ignore[arg-type]
            name=SERVICE_NAME,
            version=service_version(),
            description="writebus bus node: writes to the primary, progress broadcasts",
            metadata={
                "region": region,
                "prefix": prefix,
                "replica_id": replica_id,
                "writebus_version": VERSION,
                "subjects": ",".join(subjects),
            },
        )
        # The server has the service's subscriptions once this returns: a $SRV.PING sent
        # right after (from another connection) finds the node instead of "no responders".
        await nc.flush()
        return service
    except Exception as exc:
        log.warning("discovery.unavailable", error=f"{type(exc).__name__}: {exc}")
        return None
