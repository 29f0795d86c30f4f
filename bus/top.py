"""``writebus top``: a live terminal view of a deployment. The I/O half.

It connects with :func:`~writebus.client.connect.connect_nats` and only subscribes (through a
:class:`~writebus.bus.watch.Watch` on ``<prefix>.lsn.>`` and ``<prefix>.status.>``), so the
``dashboard`` NATS role is enough; settings come from the environment like every writebus
program (``NATS_URL``, ``NATS_USER``/``NATS_PASSWORD`` or ``NATS_CREDS``, ``NATS_TLS_*``,
``WRITEBUS_PREFIX``). What it draws is :func:`writebus.bus.topview.render`, a pure function of
the watch's snapshot.

Three ways to run it:

* live (the default): redraw every ``interval`` seconds in a ``rich.live.Live`` until Ctrl-C
  or SIGTERM, then exit 0 leaving the last picture on the terminal;
* ``once``: listen for ``wait`` seconds -- long enough to hear every node's once-a-second
  broadcast and status at least twice -- then print the view once;
* ``once`` and ``as_json``: the same snapshot as one JSON object
  (:meth:`~writebus.bus.watch.Snapshot.as_dict`), for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from writebus.bus.watch import Watch
from writebus.client.connect import connect_nats
from writebus.client.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

# rich (the 'ops' extra) is imported where it is used, so this module -- and with it
# `writebus --help` -- loads without it.

#: Seconds ``--once`` listens before printing: every node broadcasts and reports once a second.
DEFAULT_WAIT = 2.5
#: Seconds between redraws of the live view.
DEFAULT_INTERVAL = 1.0
#: A node silent this long is shown stale (3.5 broadcast intervals, as the watch's default).
DEFAULT_STALE_AFTER = 3.5


@dataclass(frozen=True, kw_only=True)
class TopOptions:
    """What the command line asked for."""

    once: bool = False
    as_json: bool = False
    wait: float = DEFAULT_WAIT
    interval: float = DEFAULT_INTERVAL
    stale_after: float = DEFAULT_STALE_AFTER


async def run_top(
    settings: Settings,
    options: TopOptions,
    *,
    console: Console | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Watch the deployment ``settings`` names and show it as ``options`` say; return the exit
    code. The live view ends when ``stop`` is set (by default: on SIGINT or SIGTERM).

    Raises :class:`~writebus.client.errors.ConnectError` when NATS cannot be reached.
    """
    from rich.console import Console

    from writebus.bus.topview import render

    console = console or Console()
    nc = await connect_nats(settings, name="writebus-top")
    watch = Watch(nc, prefix=settings.prefix, stale_after=options.stale_after)
    try:
        await watch.start()
        if options.once:
            await asyncio.sleep(options.wait)  # a listening window, not a synchronisation
            snapshot = watch.snapshot()
            if options.as_json:
                # Plain text, not rich's: a script's JSON parser wants no markup or wrapping.
                console.file.write(json.dumps(snapshot.as_dict(), indent=2) + "\n")
            else:
                console.print(render(snapshot, prefix=settings.prefix, stale_after=watch.stale_after))
            return 0
        stop = stop or asyncio.Event()
        with _stop_on_signals(stop):
            await _live(watch, console, stop, prefix=settings.prefix, interval=options.interval)
        return 0
    finally:
        await watch.stop()
        with contextlib.suppress(Exception):
            await nc.close()


async def _live(
    watch: Watch, console: Console, stop: asyncio.Event, *, prefix: str, interval: float
) -> None:
    from rich.live import Live

    from writebus.bus.topview import render

    def view() -> RenderableType:
        return render(watch.snapshot(), prefix=prefix, stale_after=watch.stale_after)

    # Redrawn by this loop only, each time with a fresh snapshot: rich's own refresh thread
    # would redraw the same picture with its ages frozen.
    with Live(view(), console=console, auto_refresh=False, transient=False) as live:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            live.update(view(), refresh=True)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM into ``stop``: the view closes in order, without a traceback."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def main(options: TopOptions) -> int:
    """``writebus top``: settings from the environment; returns the exit code.

    Ctrl-C ends the live view with 0. In ``once`` mode it interrupts a script's query, which
    the command line reports as usual (130).
    """
    settings = Settings.from_env()
    try:
        return asyncio.run(run_top(settings, options))
    except KeyboardInterrupt:  # before the handlers were installed (e.g. while connecting)
        if options.once:
            raise
        return 0
