"""The process around a bus node (``writebus serve``): start it, serve until SIGTERM or
SIGINT, then drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from pathlib import Path

from writebus.bus.service import BusService
from writebus.bus.settings import BusSettings
from writebus.client.log import get_logger

log = get_logger("writebus.bus.service")


async def serve(settings: BusSettings) -> None:
    """Run a bus node until SIGTERM or SIGINT, then drain.

    A signal while the node is still starting (its database or NATS not reachable yet) stops
    it at once rather than after the start-up timeout.
    """
    service = BusService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(service.start(), name="bus-start")
    signalled = asyncio.create_task(stop.wait(), name="bus-stop-signal")
    await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.info("bus.start_aborted", region=settings.region)
        await service.stop()
        return
    if starting.exception() is not None:
        signalled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await signalled
        starting.result()  # raise the start-up failure
    # What starting made (modules, pools, the service) lives as long as the process: keep it
    # out of the collector's full passes, which would otherwise walk it again and again while
    # requests churn through short-lived objects.
    gc.collect()
    gc.freeze()
    ready = Path(settings.ready_file) if settings.ready_file else None
    if ready is not None:
        ready.write_text(f"{os.getpid()}\n")
    await signalled
    if ready is not None:
        ready.unlink(missing_ok=True)
    await service.stop()
