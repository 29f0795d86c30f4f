"""NATS lost while an application runs: fail fast and typed, close cleanly, recover."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.conftest import Rig
from writebus import Database, DisconnectedError, Outcome

pytestmark = pytest.mark.slow


async def _until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_write_that_cannot_be_sent_fails_at_once(rig: Rig) -> None:
    """With the lax nats-server down, a new write raises DisconnectedError (not applied) at
    once instead of an RPC timeout seconds later, and is absent from the primary; leaving
    `async with` then raises nothing; once NATS is back, writes go through again."""
    await rig.start_buses("syd", "lax")
    nats_lax = rig.stack.nats["lax"]
    sql = f"INSERT INTO {rig.table}(key, region) VALUES (%s, 'lax')"
    async with Database(rig.settings("lax")) as db:
        await db.execute(sql, ["before"])
        await asyncio.to_thread(nats_lax.kill)
        assert db.nats is not None
        await _until(lambda: not db.nats.is_connected, 5.0)  # type: ignore[union-attr]
        t0 = time.monotonic()
        with pytest.raises(DisconnectedError) as info:
            await db.execute(sql, ["during"])
        assert time.monotonic() - t0 < 1.0  # at once, not after the 5 s RPC timeout
        assert info.value.outcome is Outcome.NOT_APPLIED
        # Leaving the block now, with NATS down, must not raise (ConnectionResetError...).
    await asyncio.to_thread(nats_lax.start)
    await asyncio.to_thread(nats_lax.wait_gateways, timeout=10)
    async with Database(rig.settings("lax")) as db:
        await db.execute(sql, ["after"])
    keys = await asyncio.to_thread(
        lambda: {k for k, in rig.stack.primary.execute(f"SELECT key FROM {rig.table}")}
    )
    assert keys == {"before", "after"}
