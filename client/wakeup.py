"""Futures whose waiting tasks are resumed together, from one event-loop callback.

Setting an asyncio future's result schedules one event-loop callback per done-callback
(``loop.call_soon``, a :class:`asyncio.Handle` each): for a task awaiting the future, that
callback is what resumes it. When one replay broadcast releases thousands of waiters at once,
making and running those handles costs about a third of the whole wake-up -- more than the
tracker's own bookkeeping.

A :class:`BatchFuture` holds its done-callbacks itself. :func:`release` settles many of them
and schedules a single callback that runs every held callback in turn, each in the context it
was registered with, exactly as the handles would have. Anything else that settles a
:class:`BatchFuture` -- ``set_result``, ``set_exception``, ``cancel`` (a waiting task being
cancelled calls it) -- behaves as a plain future does, so only :func:`release` is different.

Waiting tasks resume in the order :func:`release` was given their futures, after the
callbacks already scheduled, as they would with one handle each.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

_T = TypeVar("_T")

_Callback = Callable[[Any], object]
_Held = tuple[tuple[_Callback, contextvars.Context], ...]

#: The plain future's own methods: settling through them schedules nothing, since a
#: BatchFuture never hands its callbacks to the plain future while pending.
_set_result = asyncio.Future.set_result


class BatchFuture(asyncio.Future[_T]):
    """An :class:`asyncio.Future` that keeps its done-callbacks for :func:`release`.

    Awaiting it, cancelling it, or settling it with ``set_result``/``set_exception`` works as
    for any future."""

    __slots__ = ("_held",)

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(loop=loop)
        self._held: _Held = ()

    def add_done_callback(
        self, fn: _Callback, *, context: contextvars.Context | None = None
    ) -> None:
        """Hold ``fn`` until the future is settled (scheduled at once if it already is)."""
        if self.done():
            super().add_done_callback(fn, context=context)
        else:
            ctx = context if context is not None else contextvars.copy_context()
            self._held = (*self._held, (fn, ctx))

    def remove_done_callback(self, fn: _Callback) -> int:
        """Remove every ``fn`` not yet run or scheduled; return how many were removed."""
        if self.done():  # settled: the held callbacks have run or are about to
            return super().remove_done_callback(fn)
        # Pending, every callback is held here (the plain future has none until settled).
        kept = tuple((f, ctx) for f, ctx in self._held if f != fn)
        removed = len(self._held) - len(kept)
        self._held = kept
        return removed

    def set_result(self, result: _T) -> None:
        """Settle with ``result``, scheduling each held callback (as a plain future does)."""
        super().set_result(result)
        self._schedule_held()

    def set_exception(self, exception: type | BaseException) -> None:
        """Settle with ``exception``, scheduling each held callback (as a plain future does)."""
        super().set_exception(exception)
        self._schedule_held()

    def cancel(self, msg: Any | None = None) -> bool:
        """Cancel, scheduling each held callback (as a plain future does)."""
        if not super().cancel(msg=msg):
            return False
        self._schedule_held()
        return True

    def _schedule_held(self) -> None:
        loop = self.get_loop()
        held, self._held = self._held, ()
        for fn, ctx in held:
            loop.call_soon(fn, self, context=ctx)


def release(futures: Iterable[BatchFuture[_T]], value: _T) -> int:
    """Set ``value`` as the result of every future of ``futures`` still pending, and resume
    whoever waits on them from one callback, scheduled on their event loop (they must share
    one). Futures already done (a cancelled waiter's) are skipped. Returns how many were
    settled."""
    settled: list[BatchFuture[_T]] = []
    try:
        for fut in futures:
            try:  # no done() check first: this loop is on the wake-up's critical path
                _set_result(fut, value)
            except asyncio.InvalidStateError:
                continue
            settled.append(fut)
    finally:  # even when interrupted: a settled future's waiter must still be resumed
        if settled:
            loop = settled[0].get_loop()
            loop.call_soon(_resume, loop, settled)
    return len(settled)


def _resume(loop: asyncio.AbstractEventLoop, settled: list[BatchFuture[Any]]) -> None:
    """Run the held callbacks of ``settled``: what their handles would have run."""
    for i, fut in enumerate(settled):
        # Taken off the future: a settled future must not keep its waiting task alive.
        held, fut._held = fut._held, ()
        for j, (fn, ctx) in enumerate(held):
            try:
                ctx.run(fn, fut)
            except (SystemExit, KeyboardInterrupt):
                # As a handle would: this propagates, and the callbacks after it run later.
                fut._held = held[j + 1 :]
                loop.call_soon(_resume, loop, settled[i:])
                raise
            except BaseException as exc:
                loop.call_exception_handler(
                    {"message": f"Exception in callback {fn!r}", "exception": exc, "future": fut}
                )
