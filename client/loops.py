"""Which event loop writebus runs its own loops on: uvloop when it is installed.

``pip install 'writebus[speed]'`` adds uvloop; the bus service (``writebus serve``) and the
synchronous API's loop thread then use it without being asked. ``WRITEBUS_EVENT_LOOP`` picks
explicitly: ``auto`` (the default), ``uvloop`` (an error when it is not installed) or
``asyncio`` (the standard loop, for comparison or to rule uvloop out). An application's own
asyncio loop is its business: ``Database`` runs on whatever loop it is called from.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from writebus.client.errors import ConfigError

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
#: The values ``WRITEBUS_EVENT_LOOP`` takes.
CHOICES = ("auto", "uvloop", "asyncio")


def uvloop_installed() -> bool:
    """True when ``import uvloop`` would work (without importing it)."""
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str = "auto") -> str:
    """The loop ``choice`` means on this machine: ``"uvloop"`` or ``"asyncio"``.

    A value that is not one of :data:`CHOICES`, or ``uvloop`` when it is not installed, is a
    :class:`~writebus.client.errors.ConfigError` naming ``WRITEBUS_EVENT_LOOP``.
    """
    value = choice.strip().lower()
    if value not in CHOICES:
        raise ConfigError(
            f"WRITEBUS_EVENT_LOOP={choice!r}: use one of {', '.join(CHOICES)}",
            variable="WRITEBUS_EVENT_LOOP",
        )
    if value == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if value == "uvloop" and not uvloop_installed():
        raise ConfigError(
            "WRITEBUS_EVENT_LOOP=uvloop but uvloop is not installed: "
            "pip install 'writebus[speed]'",
            variable="WRITEBUS_EVENT_LOOP",
        )
    return value


def loop_factory(choice: str = "auto") -> LoopFactory:
    """A function making a new loop of the kind ``choice`` resolves to."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(coro)`` on the loop ``choice`` resolves to."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(coro)


def loop_lock(locks: dict[int, asyncio.Lock]) -> asyncio.Lock:
    """The lock in ``locks`` for the running event loop, made on first use (a registry shared
    by the loops of one process -- the sync API's thread, an application's own -- needs one
    lock per loop)."""
    loop_id = id(asyncio.get_running_loop())
    lock = locks.get(loop_id)
    if lock is None:
        lock = locks[loop_id] = asyncio.Lock()
    return lock
