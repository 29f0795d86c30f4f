"""One asyncio event loop on a daemon thread per process, for the synchronous API.

:class:`~writebus.client.sync.SyncDatabase` runs writes and replay waits on the async
:class:`~writebus.client.db.Database`, on this loop: one code path, so the sync API cannot drift
from the async one. Calls from any number of threads are safe (``run_coroutine_threadsafe``).

Fork safety: a forked child (gunicorn ``--preload``, Celery prefork) inherits the parent's
sockets but not its threads. After ``fork`` the child forgets the parent's loop -- without
closing anything, since closing an inherited socket would end the *parent's* connection -- and
the next call starts a fresh loop and fresh connections.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from writebus.client.errors import Outcome, WriteBusError
from writebus.client.loops import loop_factory

T = TypeVar("T")

#: Objects of the parent process a forked child must keep referenced (never garbage-collect:
#: finalising them would send a disconnect on the parent's sockets).
_inherited: list[Any] = []


class LoopThread:
    """An event loop running forever on a daemon thread, of the kind ``choice`` names
    (:func:`writebus.client.loops.resolve`; default: ``WRITEBUS_EVENT_LOOP``, else ``auto``,
    uvloop when installed). A choice that is not one is a
    :class:`~writebus.client.errors.ConfigError`."""

    def __init__(self, choice: str | None = None) -> None:
        self.pid = os.getpid()
        self.stopping = False
        if choice is None:
            choice = os.environ.get("WRITEBUS_EVENT_LOOP", "auto")
        self.loop = loop_factory(choice)()
        self.thread = threading.Thread(
            target=self._run, name="writebus-loop", daemon=True
        )
        self._started = threading.Event()
        self.thread.start()
        self._started.wait()

    def __repr__(self) -> str:
        return f"<LoopThread pid={self.pid} running={self.thread.is_alive()}>"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], *, write: bool = False) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception) in the
        calling thread. Interrupting the wait (Ctrl-C) cancels the coroutine. Once the loop
        is stopping (the process exits: :func:`_stop_at_exit`), a call is not made, and one
        under way is cancelled: a :class:`~writebus.client.errors.WriteBusError` says so --
        for a ``write``, not applied or an unknown outcome."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a SyncDatabase method was called from writebus' own loop thread")
        if self.stopping or not self.thread.is_alive():
            coro.close()
            raise _exiting(write, Outcome.NOT_APPLIED, "the call was not made")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except (KeyboardInterrupt, SystemExit):
            future.cancel()
            raise
        except concurrent.futures.CancelledError:
            if self.stopping:
                raise _exiting(write, Outcome.UNKNOWN, "the call was cut short") from None
            raise asyncio.CancelledError() from None

    def stop(self) -> None:
        """Stop the loop and join its thread (pending tasks are cancelled)."""
        self.stopping = True
        if not self.thread.is_alive():
            return

        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_rest(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def _exiting(write: bool, outcome: Outcome, what: str) -> WriteBusError:
    """The error of a call the stopping loop did not make or did not finish."""
    err = WriteBusError(f"writebus' loop thread has stopped (the process is exiting): {what}")
    if write:
        err.outcome = outcome
    return err


_lock = threading.Lock()
_shared: LoopThread | None = None


def shared_loop() -> LoopThread:
    """The process's loop thread, started on first use (and again in a forked child)."""
    global _shared
    with _lock:
        if (
            _shared is None
            or _shared.pid != os.getpid()
            or not (_shared.thread.is_alive() or _shared.stopping)  # stopped at exit: stays
        ):
            if _shared is not None and _shared.pid != os.getpid():
                _inherited.append(_shared)
            _shared = LoopThread()
        return _shared


_reopen = threading.Lock()


def reopen_lock() -> threading.Lock:
    """The process's lock for making each handle's own lock in this process (made afresh in
    each child); held only for that."""
    return _reopen


def _after_fork_in_child() -> None:
    global _shared, _lock, _reopen
    if _shared is not None:
        _inherited.append(_shared)
        _shared = None
    # The parent's locks may have been held by another thread at fork: never released here.
    _lock = threading.Lock()
    _reopen = threading.Lock()


def _stop_at_exit() -> None:
    loop = _shared
    if loop is not None and loop.pid == os.getpid():
        try:
            loop.stop()
        except Exception:  # interpreter shutdown: best effort
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_at_exit)
