"""The ``writebus`` command: ``serve``, ``demo``, ``dev up``, ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from writebus.bus.log import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="writebus", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run a bus node (settings from the environment)")

    demo = sub.add_parser(
        "demo", help="start a two-region stack on this machine and write from the replica region"
    )
    demo.add_argument("--writes", type=int, default=20, help="writes to make (default 20)")
    demo.add_argument(
        "--delay-ms",
        type=float,
        default=25.0,
        help="simulated one-way WAN delay between regions (default 25 ms)",
    )
    demo.add_argument("--fsync", action="store_true", help="run Postgres with fsync on")

    dev = sub.add_parser("dev", help="development stack")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="start a two-region stack and keep it running")
    up.add_argument("--delay-ms", type=float, default=25.0)
    up.add_argument("--dir", default=None, help="directory for the servers' data")

    bench = sub.add_parser("bench", help="benchmarks (needs the 'bench' extra)")
    bench.add_argument("--quick", action="store_true", help="few samples, under 2 minutes")
    bench.add_argument("--json", dest="json_path", default=None, help="write a JSON report here")
    bench.add_argument("--plot", dest="plot_path", default=None, help="write a PNG plot here")
    bench.add_argument("--delay-ms", type=float, default=25.0)
    return p


def _load_bench() -> Any:
    """``bench.run.run_bench`` from the source checkout this package runs from.

    The benchmarks are a development tool: they are not in the wheel, and the service never
    imports them. From an editable install of a checkout, ``bus/`` sits beside ``bench/``.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "run.py").is_file():
        sys.exit(
            "writebus bench: run it from a source checkout "
            "(git clone the writebus repository, then `make bench`)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from bench.run import run_bench
    except ImportError as exc:
        sys.exit(f"writebus bench needs the bench extra: pip install -e '.[bench]' ({exc})")
    return run_bench


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``writebus`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        configure_logging()
        from writebus.bus.service import serve
        from writebus.bus.settings import BusSettings

        asyncio.run(serve(BusSettings.from_env()))
    elif args.command == "demo":
        configure_logging(fmt="console", level="warning")
        from writebus.bus.demo import run_demo

        sys.exit(asyncio.run(run_demo(writes=args.writes, delay_ms=args.delay_ms,
                                      fsync=args.fsync)))
    elif args.command == "dev":
        configure_logging(fmt="console")
        from writebus.bus.dev import dev_up

        dev_up(delay_ms=args.delay_ms, base_dir=args.dir)
    elif args.command == "bench":
        configure_logging(fmt="console", level="warning")
        run_bench = _load_bench()
        sys.exit(run_bench(quick=args.quick, json_path=args.json_path, plot_path=args.plot_path,
                           delay_ms=args.delay_ms))
