"""What a failover drill is asked to do: its options, and the ``drill failover`` arguments.

Pure and light: ``writebus --help`` builds every subcommand's parser, so this module imports
no servers, no database driver.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from writebus.bus.checklist import positive_seconds
from writebus.bus.command import number_arg
from writebus.bus.drillreport import MODES, Mode


@dataclass(frozen=True, kw_only=True)
class DrillOptions:
    """How the drill runs.

    ``duration``: seconds of steady writes before the crash; ``rate``: writes started per
    second in each region; ``delay_ms``: one-way WAN delay between the regions; ``modes``: the
    replication modes to drill, one fresh stack each. After the crash, writes go on until both
    regions have had ``settle`` seconds' worth acknowledged by the new primary (giving up after
    ``resume_timeout``). Each write may take ``rpc_timeout`` seconds, retries included: enough
    to ride through the failover, as an app expecting one would set ``WRITEBUS_RPC_TIMEOUT``.
    """

    duration: float = 5.0
    rate: float = 50.0
    delay_ms: float = 25.0
    modes: tuple[Mode, ...] = MODES
    settle: float = 1.0
    resume_timeout: float = 30.0
    rpc_timeout: float = 15.0
    replication_timeout: float = 10.0
    stack_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not (self.duration > 0 and self.rate > 0 and self.settle > 0):
            raise ValueError("duration, rate and settle must be more than zero")
        if self.delay_ms < 0:
            raise ValueError("delay_ms cannot be negative")
        if not self.modes or not set(self.modes) <= set(MODES):
            raise ValueError(f"modes must be some of {MODES}")


def _positive(text: str) -> float:
    value = number_arg(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not more than zero")
    return value


def delay_ms(text: str) -> float:
    """An argparse type: a one-way delay in milliseconds, 0 or more and finite."""
    value = number_arg(text, float, "a number of milliseconds")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: a delay is 0 or more, and finite")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    value = number_arg(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``drill`` command's arguments: one subcommand, ``failover``."""
    sub = p.add_subparsers(dest="drill_command", required=True)
    fo = sub.add_parser(
        "failover",
        help="crash the primary under load, promote the standby, check no acked write is lost",
        description="On a two-region stack on this machine: steady writes from syd (direct) "
        "and lax (via the bus); crash the syd primary; promote the lax standby; writes resume "
        "with no app restart. Reports the write-unavailability window, writes acked / unknown "
        "/ failed, acked writes lost or missing on the new primary, and (in both modes) what "
        "synchronous replication costs in latency. Exit 1 if an invariant broke.",
    )
    fo.add_argument("--duration", type=positive_seconds, default=5.0, metavar="SECONDS",
                    help="steady writes before the crash (default 5)")  # fmt: skip
    fo.add_argument("--rate", type=_positive, default=50.0, metavar="PER_SECOND",
                    help="writes started per second in each region (default 50)")  # fmt: skip
    fo.add_argument("--delay-ms", type=delay_ms, default=25.0, metavar="MS",
                    help="simulated one-way WAN delay between regions (default 25)")  # fmt: skip
    fo.add_argument(
        "--mode", choices=("async", "sync", "both"), default="both",
        help="replication to the standby: asynchronous, synchronous "
        "(synchronous_standby_names), or both, one stack after the other (default both)",
    )  # fmt: skip
    fo.add_argument("--json", action="store_true", help="print one JSON report on stdout")


def from_arguments(args: argparse.Namespace) -> DrillOptions:
    """The options the parsed ``drill failover`` arguments ask for."""
    modes: tuple[Mode, ...] = MODES if args.mode == "both" else (args.mode,)
    return DrillOptions(duration=args.duration, rate=args.rate, delay_ms=args.delay_ms,
                        modes=modes)  # fmt: skip
