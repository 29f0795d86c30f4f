"""A direct write's run bounded by the caller's deadline (pure asyncio; the real-server test,
a statement waiting for a row lock, is in ``tests/test_write_path.py``)."""

from __future__ import annotations

import asyncio

import pytest

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


async def test_a_run_past_its_deadline_goes_on_and_the_outcome_is_unknown() -> None:
    """The caller hears DatabaseTimeoutError, an unknown outcome naming the request, at the
    deadline; the run is not cancelled (a cancel during a synchronous COMMIT would leave it
    committed locally, unconfirmed): it ends on its own."""
    release, ended = asyncio.Event(), asyncio.Event()

    async def blocked() -> int:
        await release.wait()
        ended.set()
        return 1

    with pytest.raises(DatabaseTimeoutError) as info:
        await within(blocked(), 0.05, request_id="r1")
    assert info.value.outcome is Outcome.UNKNOWN and info.value.request_id == "r1"
    release.set()
    await asyncio.wait_for(ended.wait(), 1)


async def test_a_cancelled_caller_cancels_its_run() -> None:
    """Cancelling the caller cancels the run too, as it did before runs were bounded."""
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
