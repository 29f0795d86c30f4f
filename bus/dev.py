"""``writebus dev up``: keep a two-region stack running and print how to use it."""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path

from writebus.bus.embedded.stack import Stack


def dev_up(*, delay_ms: float = 25.0, base_dir: str | None = None) -> None:
    """Start the stack and a bus node per region; print each region's environment; wait for
    Ctrl-C or SIGTERM, then stop everything."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    stack = Stack(one_way_delay_ms=delay_ms, base_dir=Path(base_dir) if base_dir else None)
    stack.start()
    try:
        buses = [stack.start_bus(r, log_name=f"bus-{r}") for r in ("syd", "lax")]
        for bus in buses:
            bus.wait_ready(30)
        for region in ("syd", "lax"):
            print(f"# region {region}: paste into a shell to run an app there")
            for key, value in stack.env(region).items():
                print(f"export {key}={shlex.quote(value)}")
            print()
        print(f"# servers: {stack.describe()}")
        print("# Ctrl-C to stop", flush=True)
        done.wait()
        for bus in buses:
            bus.terminate()
            bus.wait(30)
    finally:
        stack.stop()
