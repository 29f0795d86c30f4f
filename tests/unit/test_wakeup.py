"""Batch-released futures: one callback resumes many waiting tasks, and everything else
behaves as a plain future."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from tests.support.scheduled import record_call_soon
from writebus.client.wakeup import BatchFuture, release

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


async def _waiting(n: int) -> tuple[list[BatchFuture[Any]], list[asyncio.Task[Any]]]:
    """``n`` futures, and a started task awaiting each."""
    loop = asyncio.get_running_loop()
    futures: list[BatchFuture[Any]] = [BatchFuture(loop=loop) for _ in range(n)]

    async def wait(f: BatchFuture[Any]) -> Any:
        return await f

    tasks = [asyncio.create_task(wait(f)) for f in futures]
    await asyncio.sleep(0)
    return futures, tasks


async def test_release_resumes_every_waiter_with_the_value_from_one_callback(
    monkeypatch: Any,
) -> None:
    """Each task gets the value, in its own context; the loop ran one callback for all of
    them, not one each (what a plain future's set_result schedules)."""
    loop = asyncio.get_running_loop()
    futures = [BatchFuture[int](loop=loop) for _ in range(50)]
    order: list[int] = []

    async def wait(i: int) -> tuple[int, str]:
        who.set(f"task {i}")
        value = await futures[i]
        order.append(i)
        return value, who.get()

    tasks = [asyncio.create_task(wait(i)) for i in range(50)]
    await asyncio.sleep(0)
    scheduled = record_call_soon(loop, monkeypatch)
    assert release(futures, 7) == 50
    assert all(f.done() for f in futures)
    assert len(scheduled) == 1
    results = await asyncio.gather(*tasks)
    assert results == [(7, f"task {i}") for i in range(50)]
    assert order == list(range(50))


async def test_release_skips_a_cancelled_waiter() -> None:
    """A cancelled task's future is skipped: that task sees CancelledError, the others the
    value, and the count leaves it out."""
    futures, tasks = await _waiting(3)
    tasks[1].cancel()
    await asyncio.sleep(0)
    assert futures[1].cancelled()
    assert release(futures, "up") == 2
    assert await tasks[0] == "up" and await tasks[2] == "up"
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]


async def test_release_with_nothing_pending_schedules_nothing(monkeypatch: Any) -> None:
    """Futures already done are not touched and no callback is scheduled."""
    loop = asyncio.get_running_loop()
    done = BatchFuture[int](loop=loop)
    done.set_result(1)
    scheduled = record_call_soon(loop, monkeypatch)
    assert release([done], 2) == 0
    assert scheduled == []
    assert done.result() == 1


@pytest.mark.parametrize("settle", ["set_result", "set_exception", "cancel"])
async def test_plain_settling_wakes_the_waiter_as_a_plain_future_does(settle: str) -> None:
    """set_result, set_exception and cancel schedule the held callbacks themselves."""
    loop = asyncio.get_running_loop()
    fut = BatchFuture[int](loop=loop)

    async def wait() -> int:
        return await fut

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    if settle == "set_result":
        fut.set_result(3)
        assert await asyncio.wait_for(task, 1) == 3
    elif settle == "set_exception":
        fut.set_exception(KeyError("k"))
        with pytest.raises(KeyError):
            await asyncio.wait_for(task, 1)
    else:
        assert fut.cancel()
        assert not fut.cancel()  # already done
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1)


async def test_done_callbacks_added_removed_and_added_late() -> None:
    """A removed callback never runs; one added after settling is scheduled at once."""
    loop = asyncio.get_running_loop()
    fut = BatchFuture[int](loop=loop)
    calls: list[str] = []

    def first(f: asyncio.Future[int]) -> None:
        calls.append(f"first {f.result()}")

    def second(f: asyncio.Future[int]) -> None:
        calls.append("second")

    fut.add_done_callback(first)
    fut.add_done_callback(second)
    fut.add_done_callback(second)
    assert fut.remove_done_callback(second) == 2
    release([fut], 5)
    fut.add_done_callback(first)
    assert fut.remove_done_callback(second) == 0
    for _ in range(3):
        await asyncio.sleep(0)
    assert calls == ["first 5", "first 5"]


async def test_a_failing_callback_is_reported_and_the_rest_still_run() -> None:
    """An exception in one held callback goes to the loop's exception handler, as a handle's
    would, and the callbacks after it still run."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        futures = [BatchFuture[int](loop=loop) for _ in range(3)]
        ran: list[int] = []

        def boom(f: asyncio.Future[int]) -> None:
            raise RuntimeError("callback failed")

        futures[0].add_done_callback(lambda f: ran.append(0))
        futures[1].add_done_callback(boom)
        futures[2].add_done_callback(lambda f: ran.append(2))
        release(futures, 1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert ran == [0, 2]
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], RuntimeError)


async def test_keyboard_interrupt_propagates_and_the_rest_run_later() -> None:
    """A KeyboardInterrupt from a held callback propagates out of the batch, as from a
    handle; the callbacks after it are rescheduled, and none runs twice."""
    loop = asyncio.get_running_loop()
    futures = [BatchFuture[int](loop=loop) for _ in range(3)]
    ran: list[str] = []
    interrupted = False

    def interrupt(f: asyncio.Future[int]) -> None:
        nonlocal interrupted
        ran.append("interrupt")
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    futures[0].add_done_callback(lambda f: ran.append("a"))
    futures[1].add_done_callback(interrupt)
    futures[1].add_done_callback(lambda f: ran.append("b"))
    futures[2].add_done_callback(lambda f: ran.append("c"))
    release(futures, 1)
    handle_resume = loop._ready.pop()  # type: ignore[attr-defined]  # run it here, not in the loop
    with pytest.raises(KeyboardInterrupt):
        handle_resume._run()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ran == ["a", "interrupt", "b", "c"]


async def test_a_released_future_keeps_no_task_alive() -> None:
    """Once its task has run, a released future (kept, as the tracker's spent heap keeps it
    for a while) holds no reference to that task or its result: both are freed without the
    cyclic collector."""
    loop = asyncio.get_running_loop()
    fut = BatchFuture[int](loop=loop)

    class Result:
        pass

    async def wait() -> Result:
        await fut
        return Result()

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    release([fut], 1)
    while not task.done():  # not awaited: the handle resuming us would hold the task
        await asyncio.sleep(0)
    result = weakref.ref(task.result())
    gone = weakref.ref(task)
    gc.disable()
    try:
        del task
        await asyncio.sleep(0)
        assert gone() is None and result() is None
    finally:
        gc.enable()
    assert fut.result() == 1


async def test_a_task_cancelled_between_release_and_resume_is_cancelled() -> None:
    """Cancelled after its future was settled but before it ran: the task ends cancelled (its
    future, done, refuses the cancel), as with a plain future; the others get the value."""
    futures, tasks = await _waiting(2)
    assert release(futures, 4) == 2
    assert tasks[0].cancel()
    assert not futures[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert await tasks[1] == 4
    assert futures[0].result() == 4


async def test_after_an_interrupt_no_held_callback_runs_twice() -> None:
    """The same callable held twice, the second run interrupted: the rest resumes after the
    one that raised, not after the first copy."""
    loop = asyncio.get_running_loop()
    fut = BatchFuture[int](loop=loop)
    runs: list[int] = []

    def twice(f: asyncio.Future[int]) -> None:
        runs.append(len(runs))
        if len(runs) == 2:
            raise KeyboardInterrupt

    fut.add_done_callback(twice)
    fut.add_done_callback(twice)
    fut.add_done_callback(lambda f: runs.append(-1))
    release([fut], 1)
    handle = loop._ready.pop()  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        handle._run()
    await asyncio.sleep(0)
    assert runs == [0, 1, -1]


def test_release_on_uvloop() -> None:
    """The same wake-up on uvloop's event loop, with a cancelled waiter among them."""

    async def main() -> tuple[int, list[Any]]:
        futures, tasks = await _waiting(100)
        tasks[7].cancel()
        await asyncio.sleep(0)
        n = release(futures, 9)
        return n, await asyncio.gather(*tasks, return_exceptions=True)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        n, results = runner.run(main())
    assert n == 99
    assert isinstance(results[7], asyncio.CancelledError)
    assert results[:7] + results[8:] == [9] * 99


async def test_an_interrupted_release_still_resumes_what_it_settled() -> None:
    """Interrupted while settling (a KeyboardInterrupt from the iterable, as from a signal):
    the futures already settled still resume their tasks; the rest stay pending."""
    futures, tasks = await _waiting(3)

    def interrupted() -> Iterator[BatchFuture[Any]]:
        yield futures[0]
        yield futures[1]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        release(interrupted(), 5)
    for _ in range(3):  # not awaited: a task left unresumed could then never be cancelled
        await asyncio.sleep(0)
    assert tasks[0].done() and tasks[1].done()
    assert tasks[0].result() == tasks[1].result() == 5
    assert not futures[2].done()
    tasks[2].cancel()
