"""The writebus command: serve, check, top, dashboard, demo, dev up, drill, bench.

A user's mistake -- a missing or malformed setting, an unreachable server, a missing extra --
is reported as one line on stderr with exit code 2, never a traceback. ``serve`` is here; the
operator tools are in :mod:`.cli_ops`, the development ones in :mod:`.cli_dev`; each is a
:class:`~writebus.bus.command.Command` in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys

from writebus.bus.cli_dev import DEV_COMMANDS
from writebus.bus.cli_ops import OPS_COMMANDS
from writebus.bus.command import Command, UsageError, require_extra
from writebus.bus.embedded.errors import EmbeddedError
from writebus.client import loops
from writebus.client.errors import ConfigError, ConnectError
from writebus.client.version import VERSION

DESCRIPTION = (
    "writebus: read from the nearby Postgres replica, write through NATS to the primary, "
    "and read your own writes."
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
    from writebus.bus.serving import serve
    from writebus.bus.settings import BusSettings

    # Output first: a WRITEBUS_* variable nothing reads (WRITEBUS_ALOW_SQL=false) is a warning
    # in it, not dropped. A malformed setting is one line either way (ConfigError).
    configure_logging()
    settings = BusSettings.from_env()
    loops.run(serve(settings), settings.event_loop)
    return 0


COMMANDS: list[Command] = [
    Command("serve", "run a bus node (settings from the environment)", _serve_arguments, _serve),
    *OPS_COMMANDS,
    *DEV_COMMANDS,
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
