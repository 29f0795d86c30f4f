"""A direct write's run bounded by the caller's deadline (pure asyncio; the real-server test,
a statement waiting for a row lock, is in ``tests/test_write_path.py``)."""

from __future__ import annotations

import asyncio

import pytest

from writebus.client import bounded
from writebus.client.bounded import within
from writebus.client.errors import DatabaseTimeoutError, Outcome


async def test_a_run_that_ends_in_time_gives_its_answer() -> None:
    """Its result, or its own error, unchanged."""

    async def ok() -> int:
        return 7

    async def fails() -> int:
        raise ValueError("its own")

    assert await within(ok(), 1, request_id="r") == 7
    with pytest.raises(ValueError, match="its own"):
        await within(fails(), 1, request_id="r")


async def test_a_run_past_its_deadline_is_cancelled_and_the_outcome_unknown() -> None:
    """The run is cancelled (as psycopg then cancels the query on the server), and the answer
    is DatabaseTimeoutError, an unknown outcome naming the request."""
    cancelled = asyncio.Event()

    async def blocked() -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    with pytest.raises(DatabaseTimeoutError) as info:
        await within(blocked(), 0.05, request_id="r1")
    assert cancelled.is_set() and info.value.cancelled
    assert info.value.outcome is Outcome.UNKNOWN and info.value.request_id == "r1"


async def test_a_run_that_does_not_end_when_cancelled_is_left_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel the database does not answer (a dead network): the caller is answered after
    the grace, and the run is left to end on its own."""
    monkeypatch.setattr(bounded, "CANCEL_GRACE", 0.05)
    release = asyncio.Event()

    async def deaf() -> int:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # ignores cancellation, as a wait on a dead socket would
        raise RuntimeError("ends later")

    with pytest.raises(DatabaseTimeoutError) as info:
        await within(deaf(), 0.05, request_id="r2")
    assert not info.value.cancelled
    release.set()
    await asyncio.sleep(0.01)  # its late error is consumed, not logged as never retrieved


async def test_a_cancelled_caller_cancels_its_run() -> None:
    """Cancelling the caller cancels the run too: nothing is left running."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def blocked() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.create_task(within(blocked(), 60, request_id="r3"))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    assert cancelled.is_set()
