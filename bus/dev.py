"""``writebus dev up``: keep a two-region stack running and tell apps how to reach it.

It starts the embedded stack (:class:`~writebus.bus.embedded.stack.Stack`) and a bus node per
region, prints each region's environment -- as ``export`` lines, or with ``--json`` as one JSON
object (see :func:`dev_report`) -- and runs until SIGINT, SIGTERM or SIGHUP, then stops
everything. If it is killed outright, the stack's watchdog stops the servers instead.

``--dir D`` keeps data and logs in D; running it again on D restarts the same servers with the
same data on the same ports, so exported environments stay valid. ``--base-port N`` pins the
ports to N, N+1, ... instead of free ones chosen at start.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.stack import Stack

DEFAULT_PREFIX: Final = "writebus"
#: Signals that stop ``dev up`` cleanly (SIGHUP: its terminal went away).
STOP_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def dev_report(stack: Stack, buses: Mapping[str, BusProcess], *, prefix: str) -> dict[str, Any]:
    """What ``dev up --json`` prints: :meth:`Stack.describe`, plus for each region the
    environment an app there needs (``env``, including ``WRITEBUS_PREFIX``) and the pid of each
    server it relies on (``pids``: ``postgres``, ``nats_server``, ``proxy``, ``bus``)."""
    report = stack.describe()
    report["prefix"] = prefix
    for region in stack.regions:
        postgres = stack.primary if region == stack.primary_region else stack.replica
        report["regions"][region].update(
            env=stack.env(region, WRITEBUS_PREFIX=prefix),
            pids={
                "postgres": postgres.pid,
                "nats_server": stack.nats[region].pid,
                "proxy": stack.proxy.pid,
                "bus": buses[region].pid,
            },
        )
    return report


def render_exports(report: Mapping[str, Any]) -> str:
    """The human form of :func:`dev_report`: ``export`` lines per region, then comments."""
    lines: list[str] = []
    for region, info in report["regions"].items():
        lines.append(f"# region {region}: paste into a shell to run an app there")
        lines += [f"export {key}={shlex.quote(str(value))}" for key, value in info["env"].items()]
        lines.append("")
    pids = " ".join(f"{name}={pid}" for name, pid in report["pids"].items())
    lines.append(f"# pids: {pids}")
    base_dir = report["base_dir"]
    if report["kept"]:
        again = f"writebus dev up --dir {shlex.quote(base_dir)}"
        lines.append(f"# data and logs in {base_dir} (kept; `{again}`")
        lines.append("#   starts the same servers on the same ports again)")
    else:
        lines.append(f"# data and logs in {base_dir} (removed on stop; --dir keeps them)")
    lines.append("# Ctrl-C to stop")
    return "\n".join(lines) + "\n"


def dev_up(
    *,
    delay_ms: float = 25.0,
    base_dir: str | None = None,
    base_port: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    json_output: bool = False,
    out: TextIO | None = None,
) -> None:
    """Start the stack and a bus node per region, print how to reach them (``export`` lines, or
    one JSON object with ``json_output``), wait for SIGINT/SIGTERM/SIGHUP, then stop everything.
    A signal during start-up stops it once the step under way ends (``KeyboardInterrupt``),
    with what had started.

    Must run in the main thread (it installs signal handlers, restored on return).
    """
    out = out or sys.stdout
    done, serving = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        first = not done.is_set()
        done.set()
        if first and not serving.is_set():
            # Still starting: stop once the step under way ends (its threads are joined),
            # then stop what started. Once only: a second signal must not cut the stop short.
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        stack = Stack(
            one_way_delay_ms=delay_ms,
            base_dir=Path(base_dir) if base_dir else None,
            base_port=base_port,
        )
        stack.start()
        try:
            buses = {
                region: stack.start_bus(
                    region, env={"WRITEBUS_PREFIX": prefix}, log_name=f"bus-{region}"
                )
                for region in stack.regions
            }
            for bus in buses.values():
                bus.wait_ready(30)
            report = dev_report(stack, buses, prefix=prefix)
            serving.set()  # before the report: a signal once it is read is a plain stop
            if json_output:
                out.write(json.dumps(report, sort_keys=True) + "\n")
            else:
                out.write(render_exports(report))
            out.flush()
            done.wait()
        finally:
            stack.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
