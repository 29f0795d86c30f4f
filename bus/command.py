"""What every ``writebus`` subcommand is made of, and the mistakes it reports as one line."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


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


def number_arg(text: str, kind: Callable[[str], T], what: str) -> T:
    """``text`` read by ``kind`` (``int``, ``float``) for an argparse type; else argparse's
    error, ``'<text>' is not <what>``. The caller checks the range."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


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
