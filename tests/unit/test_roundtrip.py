"""The repair of nats-py's PONG queue after a flush timed out (pure logic; the real-server
test is tests/test_roundtrip.py)."""

from __future__ import annotations

import asyncio

from writebus.client.roundtrip import requeue_cancelled_pongs


class _Client:
    def __init__(self, pongs: list[asyncio.Future[bool]]) -> None:
        self._pongs = pongs


async def test_cancelled_futures_are_replaced_in_place() -> None:
    loop = asyncio.get_running_loop()
    waiting, cancelled, later = loop.create_future(), loop.create_future(), loop.create_future()
    cancelled.cancel()
    nc = _Client([waiting, cancelled, later])
    assert requeue_cancelled_pongs(nc) == 1
    assert nc._pongs[0] is waiting and nc._pongs[2] is later
    placeholder = nc._pongs[1]
    assert not placeholder.done()
    for fut in nc._pongs:  # what nats-py does with each PONG, in order: none raises now
        fut.set_result(True)


def test_a_client_without_the_queue_is_left_alone() -> None:
    assert requeue_cancelled_pongs(object()) == 0
    assert requeue_cancelled_pongs(_Client(None)) == 0  # type: ignore[arg-type]
