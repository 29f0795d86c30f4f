"""The operator subcommands: ``writebus check``, ``writebus top`` and ``writebus dashboard``."""

from __future__ import annotations

import argparse
import asyncio

from writebus.bus.command import Command, UsageError, require_extra

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
    configure_logging(fmt="console", level="warning")  # first: it shows settings' warnings
    settings = Settings.from_env()
    try:
        return asyncio.run(run_dashboard(settings, addr))
    except ListenError as exc:
        raise UsageError(str(exc)) from None


OPS_COMMANDS: list[Command] = [
    Command(
        "check",
        "is this node configured right? a checklist; exit 1 on any failure",
        _check_arguments,
        _check,
    ),
    Command(
        "top",
        "live view of every node: role, LSN, lag, requests, latency, errors",
        _top_arguments,
        _top,
        description=TOP_DESCRIPTION,
    ),
    Command(
        "dashboard",
        "serve a live web page of every node's lag and traffic (settings from the environment)",
        _dashboard_arguments,
        _dashboard,
    ),
]
